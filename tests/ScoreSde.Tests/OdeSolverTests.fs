module ScoreSde.Tests.OdeSolverTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let private gauss = PredictorTests.gauss
let private solvers = [ OdeSolver.Euler; OdeSolver.Heun; OdeSolver.Rk4 ]

/// Observed order log2(e(N) / e(2N)).
let private observedOrder (err: int -> float) (n: int) = Math.Log(err n / err (2 * n), 2.0)

/// The probability-flow map of Gaussian data is known in closed form: (x_t - alpha_t mu) / sqrt(v_t)
/// is constant along the ODE, with v_t = alpha_t^2 s^2 + sigma_t^2.
let exactFlow (x: float) (d: int) (t0: float) (t1: float) =
    let m0, v0 = gauss.MarginalAt sde t0 d
    let m1, v1 = gauss.MarginalAt sde t1 d
    m1 + sqrt (v1 / v0) * (x - m0)

[<Tests>]
let tests =
    testList
        "Fixed-step ODE solvers"
        [ test "observed convergence order matches the theoretical order (x' = -2 t x)" {
              // exact solution x(1) = x(0) exp(-1)
              let f: VectorField = fun x t -> x * (-2.0 * t)
              use x0 = torch.tensor ([| 1.0; -0.5 |], dtype = torch.float64)
              for solver in solvers do
                  let err n =
                      let times = Array.init (n + 1) (fun i -> float i / float n)
                      let x1, nfe = OdeSolver.integrate solver f x0 times
                      Expect.equal nfe (n * OdeSolver.evaluationsPerStep solver) "evaluations"
                      let v = values x1
                      x1.Dispose()
                      abs (v.[0] - Math.Exp(-1.0))
                  let p = observedOrder err 16
                  close 0.25 p (float (OdeSolver.order solver)) (sprintf "%s observed order" (OdeSolver.name solver))
          }

          test "probability-flow sampling converges to the exact Gaussian flow at each solver's order" {
              let model = Model.noise (gaussianNoiseModel sde gauss)
              use g = generator 4L
              use xT = torch.randn ([| 64L; 4L |], dtype = torch.float64, generator = g)
              let xs = values xT
              let eps = 1e-3
              for solver in solvers do
                  let err n =
                      let r = Sampler.sample sde model (fixedFlow solver TimeGrid.Uniform n eps) (unusedNoise ()) xT
                      Expect.equal r.Nfe (n * OdeSolver.evaluationsPerStep solver) "NFE"
                      let v = values r.Samples
                      r.Samples.Dispose()
                      v |> Array.mapi (fun i y -> abs (y - exactFlow xs.[i] (i % 4) 1.0 eps)) |> Array.max
                  // the flow is stiff near eps (beta/2 * (1 - a^2 s^2 / v) grows as v -> s^2); use enough
                  // steps to be in the asymptotic regime
                  let n =
                      match solver with
                      | OdeSolver.Euler -> 400
                      | OdeSolver.Heun -> 200
                      | _ -> 100
                  let p = observedOrder err n
                  close 0.35 p (float (OdeSolver.order solver)) (sprintf "%s observed order on the flow" (OdeSolver.name solver))
          }

          test "integration runs backwards and forwards (data -> latent -> data)" {
              let model = Model.noise (gaussianNoiseModel sde gauss)
              let field = ProbabilityFlow.sharedField sde model
              use g = generator 6L
              use x0 = torch.randn ([| 16L; 4L |], dtype = torch.float64, generator = g)
              let up = Array.init 201 (fun i -> 1e-3 + (1.0 - 1e-3) * float i / 200.0)
              use noGrad = torch.no_grad ()
              let latent, _ = OdeSolver.integrate OdeSolver.Rk4 field x0 up
              let back, _ = OdeSolver.integrate OdeSolver.Rk4 field latent (Array.rev up)
              let a, b = values x0, values back
              for i in 0 .. a.Length - 1 do
                  close 1e-6 b.[i] a.[i] (sprintf "round trip element %d" i)
              latent.Dispose()
              back.Dispose()
          } ]
