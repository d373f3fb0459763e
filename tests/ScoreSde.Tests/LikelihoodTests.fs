module ScoreSde.Tests.LikelihoodTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let private gauss = PredictorTests.gauss

/// Gaussian data N(mu, R diag(s^2) R^T) with a rotation R (non-diagonal covariance, so the flow's
/// Jacobian has off-diagonal terms and Hutchinson's estimators have non-zero variance). In the
/// eigenbasis u = R^T (x - alpha_t mu) every coordinate evolves like the diagonal case.
type private Rotated =
    {
        Mu: float[]
        S: float[]
        /// Columns are the eigenvectors (row-major D x D).
        R: float[,]
    }

    member g.Dim = g.Mu.Length

    /// Score model under an SDE: -R diag(1 / v_t) R^T (x - alpha_t mu), v_t = alpha_t^2 s^2 + sigma_t^2
    /// (float64, with the tests' own alpha and sigma).
    member g.ScoreModelFor(sde: Sde) : Tensor -> Tensor -> Tensor =
        fun x t ->
            use scope = torch.NewDisposeScope()
            let d = int64 g.Dim
            let column (f: float * float -> float) =
                torch.tensor(values t |> Array.map (marginalCoefficients sde >> f), dtype = torch.float64).reshape([| -1L; 1L |])
            let a, sigma = column fst, column snd
            let r = torch.tensor(Array.init (g.Dim * g.Dim) (fun k -> g.R.[k / g.Dim, k % g.Dim]), dtype = torch.float64).reshape(d, d)
            let mu = torch.tensor(g.Mu, dtype = torch.float64).reshape(1L, d)
            let s2 = torch.tensor(g.S |> Array.map (fun s -> s * s), dtype = torch.float64).reshape(1L, d)
            let v = a * a * s2 + sigma * sigma
            let u = (x.to_type (torch.float64) - a * mu).matmul(r) // row vectors: u = (x - a mu) R
            (u / v).matmul(r.t ()).neg().to_type(x.dtype).MoveToOuterDisposeScope()

    /// The VP-SDE's score model.
    member g.ScoreModel = g.ScoreModelFor sde

    /// Closed-form log-density at x of the pushforward of the prior N(0, std^2 I) from t = 1 to t = eps by
    /// the exact (linear) flow: x_1 = alpha_1 mu + R diag(sqrt(v_1 / v_eps)) R^T (x - alpha_eps mu), and
    /// log p(x) = log N(x_1; 0, std^2 I) + 1/2 sum_d log(v_1,d / v_eps,d).
    member g.PushforwardLogpFor (sde: Sde) (eps: float) (x: float[]) =
        let n = g.Dim
        let v t =
            let a, s = marginalCoefficients sde t
            a, Array.init n (fun d -> a * a * g.S.[d] * g.S.[d] + s * s)
        let (a0, v0), (a1, v1) = v eps, v 1.0
        let u = Array.init n (fun j -> Array.init n (fun i -> (x.[i] - a0 * g.Mu.[i]) * g.R.[i, j]) |> Array.sum)
        let u1 = Array.init n (fun j -> u.[j] * sqrt (v1.[j] / v0.[j]))
        let x1 = Array.init n (fun i -> a1 * g.Mu.[i] + (Array.init n (fun j -> g.R.[i, j] * u1.[j]) |> Array.sum))
        // the prior's variance: 1, or sigma_max^2 for VE (the paper's prior_logp)
        let p =
            match sde with
            | Sde.Ve s -> s.SigmaMax * s.SigmaMax
            | _ -> 1.0
        let logN = -0.5 * float n * log (2.0 * Math.PI * p) - 0.5 * (x1 |> Array.sumBy (fun y -> y * y)) / p
        logN + 0.5 * (Array.init n (fun d -> log (v1.[d] / v0.[d])) |> Array.sum)

    /// The VP-SDE's closed form.
    member g.PushforwardLogp (eps: float) (x: float[]) = g.PushforwardLogpFor sde eps x

/// A 3-D rotation: rotations by 0.7 about z, then 0.4 about x (orthonormal columns).
let private rotated: Rotated =
    let c1, s1, c2, s2 = cos 0.7, sin 0.7, cos 0.4, sin 0.4
    let rz = array2D [ [ c1; -s1; 0.0 ]; [ s1; c1; 0.0 ]; [ 0.0; 0.0; 1.0 ] ]
    let rx = array2D [ [ 1.0; 0.0; 0.0 ]; [ 0.0; c2; -s2 ]; [ 0.0; s2; c2 ] ]
    let r = Array2D.init 3 3 (fun i j -> Array.init 3 (fun k -> rz.[i, k] * rx.[k, j]) |> Array.sum)
    { Mu = [| 0.5; -1.0; 1.5 |]; S = [| 0.15; 0.6; 1.2 |]; R = r }

/// The diagonal Gaussian of the other tests as a rotated one with R = I.
let private diagonal: Rotated = { Mu = gauss.Mu; S = gauss.S; R = Array2D.init 4 4 (fun i j -> if i = j then 1.0 else 0.0) }

let private rows (x: Tensor) : float[][] =
    let v = values x
    let d = int (x.numel () / x.shape.[0])
    Array.init (int x.shape.[0]) (fun i -> Array.sub v (i * d) d)

/// Data near the distribution: mu + 0.8 * s-scaled normal draws in the eigenbasis, float64.
let private dataFor (g: Rotated) (n: int64) (seed: int64) =
    use gen = generator seed
    use scope = torch.NewDisposeScope()
    let d = int64 g.Dim
    let z =
        torch.randn ([| n; d |], dtype = torch.float64, generator = gen)
        * torch.tensor (g.S, dtype = torch.float64)
        * 0.8
    let r = torch.tensor(Array.init (g.Dim * g.Dim) (fun k -> g.R.[k / g.Dim, k % g.Dim]), dtype = torch.float64).reshape(d, d)
    (z.matmul (r.t ()) + torch.tensor (g.Mu, dtype = torch.float64)).MoveToOuterDisposeScope()

let private stats (v: float[]) =
    let m = Array.average v
    m, sqrt ((v |> Array.sumBy (fun y -> (y - m) ** 2.0)) / float (v.Length - 1))

let private noNoise = Noise.fromSeed 0L torch.CPU

[<Tests>]
let tests =
    testList
        "Likelihood"
        [ test "exact divergence: log p matches the closed-form pushforward density to 1e-3 nats (rtol = atol = 1e-5, every SDE)" {
              for sdeName, sde in allSdes do
                  for name, g in [ "diagonal 4-D", diagonal; "rotated 3-D", rotated ] do
                      use x = dataFor g 24L 40L
                      use r = Likelihood.compute sde (Model.score (g.ScoreModelFor sde)) Likelihood.defaults noNoise x
                      let lp = values r.LogLikelihood
                      let exact = rows x |> Array.map (g.PushforwardLogpFor sde 1e-5)
                      printfn
                          "Likelihood, %s, %s: largest |log p - closed form| over 24 samples %.2e nats, %d evaluations"
                          sdeName
                          name
                          (Array.map2 (fun a b -> abs (a - b)) lp exact |> Array.max)
                          r.Nfe
                      exact
                      |> Array.iteri (fun i e ->
                          // DP5 at 1e-5 on [x, delta log p]: the logp component carries a few 1e-5 of error per unit
                          close 1e-3 lp.[i] e (sprintf "%s %s sample %d (seed 40)" sdeName name i))
                      Expect.isGreaterThan r.Nfe 20 "evaluations counted"
          }

          test "tightening the tolerance converges to the closed form (error tracks rtol)" {
              use x = dataFor rotated 8L 41L
              let expected = rows x |> Array.map (rotated.PushforwardLogp 1e-5)
              let errAt tol =
                  let s = { Likelihood.defaults with Method = OdeMethod.dopri5 tol tol }
                  use r = Likelihood.compute sde (Model.score rotated.ScoreModel) s noNoise x
                  Array.map2 (fun a b -> abs (a - b)) (values r.LogLikelihood) expected |> Array.max
              let e5, e8 = errAt 1e-5, errAt 1e-8
              Expect.isLessThan e8 1e-6 (sprintf "error %g at tol 1e-8" e8)
              Expect.isLessThan e8 (e5 / 20.0 + 1e-9) (sprintf "error falls with the tolerance: %g -> %g" e5 e8)
          }

          test "bits/dim, dequantisation offset and latent follow from log p and the flow map" {
              use x = dataFor diagonal 6L 42L
              let s = { Likelihood.defaults with DequantizationOffset = 7.0 }
              use r = Likelihood.compute sde (Model.noise (gaussianNoiseModel sde gauss)) s noNoise x
              let lp, bpd = values r.LogLikelihood, values r.BitsPerDim
              for i in 0..5 do
                  close 1e-12 bpd.[i] (-lp.[i] / (4.0 * log 2.0) + 7.0) (sprintf "bits/dim %d" i)
              // the latent is the flow map from eps = 1e-5 to 1, within the tolerance
              let exact = values x |> Array.mapi (fun k v -> OdeSolverTests.exactFlow v (k % 4) 1e-5 1.0)
              let err = Array.map2 (fun a b -> abs (a - b)) (values r.Latent) exact |> Array.max
              Expect.isLessThan err 1e-3 "latent vs the exact flow map"
              Expect.equal r.Latent.shape x.shape "latent shape"
              Expect.equal r.LogLikelihood.shape [| 6L |] "one value per sample"
          }

          test "Hutchinson estimates are unbiased: their mean over many probes approaches the exact value" {
              // one data point replicated n times, each copy with its own probe: n independent estimates
              let n = 1500L
              use x1 = dataFor rotated 1L 43L
              use x = x1.expand([| n; 3L |]).contiguous()
              let model = Model.score rotated.ScoreModel
              let exact = rotated.PushforwardLogp 1e-5 (values x1)
              let sdOf probe k seed =
                  use g = generator seed
                  let s = { Likelihood.defaults with Divergence = Divergence.Hutchinson(probe, k) }
                  use r = Likelihood.compute sde model s (Noise.fromGenerator g) x
                  let m, sd = stats (values r.LogLikelihood)
                  // 4.5 standard errors of the mean, plus the solver's own error (1e-3 nats, previous tests)
                  close
                      (4.5 * sd / sqrt (float n) + 1e-3)
                      m
                      exact
                      (sprintf "%A x %d: mean of %d estimates (seed %d, sd %.4f)" probe k n seed sd)
                  sd
              let sdR1 = sdOf Probe.Rademacher 1 44L
              let sdG1 = sdOf Probe.Gaussian 1 45L
              let sdG4 = sdOf Probe.Gaussian 4 46L
              // the estimators are genuinely random here (off-diagonal Jacobian), so the checks above are not vacuous
              Expect.isGreaterThan sdR1 0.05 "Rademacher estimates vary"
              // Var(v^T A v) is 2 sum_{i != j} A_ij^2 for Rademacher and 2 |A|_F^2 for Gaussian probes
              Expect.isLessThan sdR1 sdG1 "Rademacher has the smaller variance"
              // averaging 4 probes halves the standard deviation; the sample sd's relative error at n = 1500
              // is ~2-4% (heavier tails for Gaussian quadratic forms), so 1.6 .. 2.5 is a wide margin
              let ratio = sdG1 / sdG4
              printfn
                  "Hutchinson standard deviations: Rademacher x1 %.4f, Gaussian x1 %.4f, Gaussian x4 %.4f (ratio %.3f)"
                  sdR1
                  sdG1
                  sdG4
                  ratio
              Expect.isTrue (ratio > 1.6 && ratio < 2.5) (sprintf "sd ratio of 1 vs 4 probes: %.3f" ratio)
          }

          test "Hutchinson probes come from the caller's noise: same seed, same estimates" {
              use x = dataFor rotated 5L 47L
              let once () =
                  use g = generator 48L
                  let s = { Likelihood.defaults with Divergence = Divergence.Hutchinson(Probe.Gaussian, 2) }
                  use r = Likelihood.compute sde (Model.score rotated.ScoreModel) s (Noise.fromGenerator g) x
                  values r.LogLikelihood
              Expect.sequenceEqual (once ()) (once ()) "reproducible"
              let probes = Likelihood.probes Probe.Rademacher 3 (Noise.fromSeed 1L torch.CPU) 4L 5L torch.float32 torch.CPU
              Expect.equal probes.shape [| 4L; 3L; 5L |] "[B, K, D]"
              Expect.isTrue (values probes |> Array.forall (fun v -> v = 1.0 || v = -1.0)) "Rademacher entries are +1 or -1"
              probes.Dispose()
          }

          test "float32 data, the data and noise parameterisations, and a fixed-step method" {
              use x64 = dataFor diagonal 6L 49L
              use x32 = x64.to_type (torch.float32)
              let expected = rows x64 |> Array.map (diagonal.PushforwardLogp 1e-5)
              let check (what: string) (tol: float) (r: LikelihoodResult) =
                  Array.iteri2 (fun i a b -> close tol a b (sprintf "%s sample %d (seed 49)" what i)) (values r.LogLikelihood) expected
              let noiseModel = Model.noise (gaussianNoiseModel sde gauss)
              let run (settings: LikelihoodSettings) (model: Model) (x: Tensor) (f: LikelihoodResult -> unit) =
                  use r = Likelihood.compute sde model settings noNoise x
                  f r
              run Likelihood.defaults noiseModel x32 (fun r ->
                  Expect.equal r.LogLikelihood.dtype torch.float32 "float32 results"
                  // float32: the divergence sums ~4 terms of size beta / v ~ 20 with 1e-7 relative rounding per
                  // evaluation over ~100 steps, and the state's own rounding near eps: 1e-2 nats
                  check "float32" 1e-2 r)
              run Likelihood.defaults (Model.data ProbabilityFlowTests.gaussianDataModel) x64 (check "data model" 1e-3)
              let rk4 =
                  { Likelihood.defaults with
                      Method = OdeMethod.FixedStep OdeSolver.Rk4
                      Schedule = { Likelihood.defaults.Schedule with Steps = 400 } }
              run rk4 noiseModel x64 (fun r ->
                  Expect.equal r.Nfe 1600 "RK4: 4 evaluations per step"
                  check "RK4 x 400" 1e-3 r)
          }

          test "gradient mode is restored, memory returns to baseline, and a non-differentiable model is refused" {
              use x = dataFor diagonal 3L 50L
              let model = Model.noise (gaussianNoiseModel sde gauss)
              let before = DisposeScopeManager.Statistics.ThreadTotalLiveCount
              let underNoGrad () =
                  use _ = torch.no_grad ()
                  let r = Likelihood.compute sde model Likelihood.defaults noNoise x
                  (r :> IDisposable).Dispose()
                  Expect.isFalse (torch.is_grad_enabled ()) "no_grad still in force"
              underNoGrad ()
              Expect.isTrue (torch.is_grad_enabled ()) "grad mode as before"
              Expect.equal DisposeScopeManager.Statistics.ThreadTotalLiveCount before "live tensors back to baseline"
              let detached = Model.noise (fun x t -> (gaussianNoiseModel sde gauss x t).detach())
              Expect.throwsT<InvalidOperationException>
                  (fun () -> Likelihood.compute sde detached Likelihood.defaults noNoise x |> ignore)
                  "detached model"
          }

          test "an output that depends on parameters but not on x: the divergence is D p(t), the drift p x + q out" {
              // score = c, a parameter: F = -beta(t) / 2 (x + c) (VP), so div F = -D beta(t) / 2 exactly
              // and the model's part of every vector-Jacobian product is zero (no path to x).
              let cValues = [| 0.5; -1.0; 2.0 |]
              use c0 = torch.tensor (cValues, dtype = torch.float64)
              use c = c0.requires_grad_ (true)
              let model = Model.score (fun x _ -> c.expand (x.shape))
              use x0 = torch.tensor ([| 1.0; 2.0; 3.0; -1.0; 0.0; 0.25 |], dtype = torch.float64)
              use x = x0.reshape (2L, 3L)
              use t = torch.tensor ([| 0.3; 0.7 |], dtype = torch.float64)
              let halfBeta (t: float) = 0.5 * (0.1 + t * 19.9)
              for probes in [ None; Some(torch.ones ([| 2L; 1L; 3L |], dtype = torch.float64)) ] do
                  let f, div = Likelihood.driftAndDivergence sde model probes x t
                  use f = f
                  use div = div
                  Array.iteri2
                      (fun i v tv -> close 1e-12 v (-3.0 * halfBeta tv) (sprintf "divergence, sample %d (probes %b)" i probes.IsSome))
                      (values div)
                      [| 0.3; 0.7 |]
                  Array.iteri
                      (fun k v ->
                          let i, d = k / 3, k % 3
                          let tv = [| 0.3; 0.7 |].[i]
                          close 1e-12 v (-halfBeta tv * ((values x).[k] + cValues.[d])) (sprintf "drift [%d, %d]" i d))
                      (values f)
                  probes |> Option.iter (fun p -> p.Dispose())
          }

          test "bad settings are rejected naming the parameter" {
              use x = dataFor diagonal 2L 51L
              let model = Model.noise (gaussianNoiseModel sde gauss)
              let expectArg name (s: LikelihoodSettings) (data: Tensor) =
                  try
                      Likelihood.compute sde model s noNoise data |> ignore
                      failtestf "expected an ArgumentException for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name (sprintf "parameter %s" name)
              let d = Likelihood.defaults
              expectArg "probes" { d with Divergence = Divergence.Hutchinson(Probe.Gaussian, 0) } x
              expectArg "eps" { d with Schedule = Schedule.uniform 1 0.0 } x
              expectArg "eps" { d with Schedule = Schedule.uniform 1 1.0 } x
              expectArg "dequantizationOffset" { d with DequantizationOffset = Double.NaN } x
              expectArg "atol" { d with Method = OdeMethod.dopri5 1e-5 0.0 } x
              expectArg "x" d (torch.zeros ([| 2L; 4L |], dtype = torch.int64))
          } ]
