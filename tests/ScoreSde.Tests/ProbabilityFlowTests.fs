module ScoreSde.Tests.ProbabilityFlowTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let private gauss = PredictorTests.gauss
let private noiseModel = Model.noise (gaussianNoiseModel sde gauss)

/// The exact data-prediction model of the 4-D Gaussian under the VP-SDE.
let gaussianDataModel: Tensor -> Tensor -> Tensor = Common.gaussianDataModel sde gauss

let private adaptive tol control = OdeMethod.Dopri5 { AdaptiveOde.defaults with Rtol = tol; Atol = tol; Control = control }

/// The adaptive flow sampler with an ODE method, down to 1e-3.
let private flowWith (m: OdeMethod) = { Sampling.flow with Method = Method.ProbabilityFlow m }

/// Sample from xT with a deterministic sampler.
let private sampleFrom (sampling: Sampling) (xT: Tensor) = Sampler.sample sde noiseModel sampling (unusedNoise ()) xT

let private maxAbsDiff (a: float[]) (b: float[]) = Array.map2 (fun x y -> abs (x - y)) a b |> Array.max

[<Tests>]
let tests =
    testList
        "Probability-flow ODE: sampling and encoding"
        [ test "the per-sample-time field agrees with the batch-shared field for noise, score and data models" {
              use g = generator 30L
              use x = torch.randn ([| 5L; 4L |], dtype = torch.float64, generator = g)
              let times = [| 1e-3; 0.05; 0.3; 0.7; 1.0 |]
              use tb = torch.tensor (times, dtype = torch.float64)
              for model in [ noiseModel; Model.score (gaussianScoreModel sde gauss); Model.data gaussianDataModel ] do
                  use f = ProbabilityFlow.field sde model x tb
                  for i in 0..4 do
                      use xi = x.narrow (0L, int64 i, 1L)
                      use fi = ProbabilityFlow.sharedField sde model xi times.[i]
                      use row = f.narrow (0L, int64 i, 1L)
                      let a, b = values row, values fi
                      for d in 0..3 do
                          close (1e-10 * (1.0 + abs b.[d])) a.[d] b.[d] (sprintf "%A model, sample %d dim %d" model.Output i d)
          }

          test "adaptive sampling from a latent lands on the exact Gaussian flow map, both step controls" {
              use g = generator 31L
              use xT = torch.randn ([| 64L; 4L |], dtype = torch.float64, generator = g)
              let exact = values xT |> Array.mapi (fun i x -> OdeSolverTests.exactFlow x (i % 4) 1.0 1e-3)
              for control in [ StepControl.PerSample; StepControl.BatchGlobal ] do
                  let r = sampleFrom (flowWith (adaptive 1e-7 control)) xT
                  use x = r.Samples
                  Expect.isGreaterThan r.Nfe 0 "evaluations counted"
                  // error tracks the tolerance (AdaptiveOdeTests: ~1e-7 at 1e-7 on this flow)
                  Expect.isLessThan (maxAbsDiff (values x) exact) 2e-6 (sprintf "%A: distance to the exact map (seed 31)" control)
          }

          test "encode maps data to the exact latent and decode(encode(x)) returns x (float64 and float32)" {
              use g = generator 32L
              for dtype, tol, bound in [ torch.float64, 1e-8, 1e-6; torch.float32, 1e-5, 2e-3 ] do
                  use x0 =
                      (torch.randn ([| 48L; 4L |], dtype = torch.float64, generator = g) * 0.5
                       + torch.tensor (gauss.Mu, dtype = torch.float64))
                          .to_type(dtype)
                  let m = adaptive tol StepControl.PerSample
                  let enc = Sampler.encode sde noiseModel m Sampling.flow.Schedule x0
                  use z = enc.Latent
                  Expect.equal z.dtype dtype "latent dtype"
                  let exactLatent = values x0 |> Array.mapi (fun i x -> OdeSolverTests.exactFlow x (i % 4) 1e-3 1.0)
                  Expect.isLessThan (maxAbsDiff (values z) exactLatent) bound (sprintf "%O: latent vs the exact map" dtype)
                  let dec = sampleFrom (flowWith m) z
                  use back = dec.Samples
                  // the round trip error is two solves' worth of tolerance-level error (plus float32 rounding)
                  Expect.isLessThan (maxAbsDiff (values back) (values x0)) bound (sprintf "%O: decode(encode(x)) vs x (seed 32)" dtype)
          }

          test "fixed-step methods: the in-place flow equals the generic solver on the shared-time field, and round-trips" {
              use g = generator 33L
              use xT = torch.randn ([| 16L; 4L |], dtype = torch.float64, generator = g)
              for solver in [ OdeSolver.Euler; OdeSolver.Heun; OdeSolver.Rk4 ] do
                  for grid in [ TimeGrid.Uniform; TimeGrid.LogSnr ] do
                      let a = sampleFrom (fixedFlow solver grid 40 1e-3) xT
                      let ts = TimeGrid.points sde grid 40 1e-3
                      let b, nfe = OdeSolver.integrate solver (ProbabilityFlow.sharedField sde noiseModel) xT ts
                      Expect.equal a.Nfe nfe "same NFE"
                      Expect.isLessThan (maxAbsDiff (values a.Samples) (values b)) 1e-12 (sprintf "%A %A: same samples" solver grid)
                      a.Samples.Dispose()
                      b.Dispose()
              let schedule = Schedule.uniform 400 1e-3
              let m = OdeMethod.FixedStep OdeSolver.Rk4
              let enc = Sampler.encode sde noiseModel m schedule xT
              let dec = sampleFrom { flowWith m with Schedule = schedule } enc.Latent
              // RK4 at 400 steps: ~1e-7 per direction on this flow (OdeSolverTests' round trip at 200 steps: 1e-6)
              Expect.isLessThan (maxAbsDiff (values dec.Samples) (values xT)) 1e-6 "RK4 round trip"
              Expect.equal enc.Nfe (400 * 4) "RK4 encode evaluations"
              enc.Latent.Dispose()
              dec.Samples.Dispose()
          }

          test "the adaptive ODE sampler reproduces the data moments from prior noise; denoising adds one evaluation" {
              let n = 20000
              use g = generator 34L
              let noise = Noise.fromGenerator g
              use xT = Sampler.prior sde [| int64 n; 4L |] torch.float32 torch.CPU noise
              let r = sampleFrom Sampling.flow xT
              use x = r.Samples
              let ms, ss = moments x
              // The exact flow maps N(0, I) at T = 1 linearly: x_eps = m_eps + sqrt(v_eps / v_1) (z - m_1)
              // (the prior is not exactly p_1, so the closed form carries the small mismatch), hence mean
              // exactFlow(0) and std sqrt(v_eps / v_1). Monte Carlo: 5 standard errors of each.
              let expectedMean d = OdeSolverTests.exactFlow 0.0 d 1.0 1e-3
              for d in 0..3 do
                  let _, v1 = gauss.MarginalAt sde 1.0 d
                  let _, ve = gauss.MarginalAt sde 1e-3 d
                  let sd = sqrt (ve / v1)
                  close (5.0 * sd / sqrt (float n)) ms.[d] (expectedMean d) (sprintf "mean dim %d (seed 34)" d)
                  close (5.0 * sd / sqrt (2.0 * float n)) ss.[d] sd (sprintf "std dim %d (seed 34)" d)
              let rd = sampleFrom { Sampling.flow with Finish = Finish.Tweedie } xT
              use xd = rd.Samples
              Expect.equal rd.Nfe (r.Nfe + 1) "denoising costs one evaluation"
              let msd, _ = moments xd
              for d in 0..3 do
                  // Tweedie: E[x_0 | x_eps] = mu + a s^2 / v (x - a mu), linear in x
                  let a = Math.Exp(-0.25 * 1e-6 * 19.9 - 0.05 * 1e-3)
                  let _, v = gauss.MarginalAt sde 1e-3 d
                  let k = a * gauss.S.[d] ** 2.0 / v
                  let expected = gauss.Mu.[d] + k * (expectedMean d - a * gauss.Mu.[d])
                  close (5.0 * k * gauss.S.[d] / sqrt (float n)) msd.[d] expected (sprintf "denoised mean dim %d (seed 34)" d)
          }

          test "the probability flow transports each SDE's Gaussian marginals: p_T to p_eps, on the exact map" {
              // For Gaussian data every marginal is N(alpha_t mu, v_t), v_t = alpha_t^2 s^2 + sigma_t^2, and the
              // flow keeps (x - alpha_t mu) / sqrt(v_t) constant. Samples of p_T (not the prior) must land on
              // that affine map, and the set on p_eps's moments.
              let n = 20000
              for name, sde in allSdes do
                  use g = generator 37L
                  use z = torch.randn ([| int64 n; 4L |], dtype = torch.float64, generator = g)
                  let m1, v1 = Array.init 4 (gauss.MarginalAt sde 1.0) |> Array.unzip
                  use xT =
                      z * torch.tensor (Array.map sqrt v1, dtype = torch.float64)
                      + torch.tensor (m1, dtype = torch.float64)
                  let model = Model.noise (gaussianNoiseModel sde gauss)
                  let r = Sampler.sample sde model (flowWith (adaptive 1e-7 StepControl.BatchGlobal)) (unusedNoise ()) xT
                  use x = r.Samples
                  let xs, zs = values x, values z
                  for i in 0 .. xs.Length - 1 do
                      let m0, v0 = gauss.MarginalAt sde 1e-3 (i % 4)
                      // tolerance-level error relative to the state's scale
                      close (1e-5 * (1.0 + sqrt v1.[i % 4])) xs.[i] (m0 + sqrt v0 * zs.[i]) (sprintf "%s element %d (seed 37)" name i)
                  let ms, ss = moments x
                  for d in 0..3 do
                      let m0, v0 = gauss.MarginalAt sde 1e-3 d
                      close (5.0 * sqrt v0 / sqrt (float n)) ms.[d] m0 (sprintf "%s mean dim %d (seed 37)" name d)
                      close (5.0 * sqrt v0 / sqrt (2.0 * float n)) ss.[d] (sqrt v0) (sprintf "%s std dim %d (seed 37)" name d)
          }

          test "per-sample control makes each sample's result independent of its batch" {
              use g = generator 35L
              use xT = torch.randn ([| 40L; 4L |], dtype = torch.float64, generator = g)
              let s = flowWith (adaptive 1e-5 StepControl.PerSample)
              let all = sampleFrom s xT
              use xs = all.Samples
              for i in [ 0L; 17L; 39L ] do
                  use xi = xT.narrow (0L, i, 1L)
                  let one = sampleFrom s xi
                  use x1 = one.Samples
                  use row = xs.narrow (0L, i, 1L)
                  Expect.isTrue (same x1 row) (sprintf "sample %d alone equals sample %d of the batch" i i)
          }

          test "bad arguments are rejected naming the parameter" {
              use xT = torch.zeros ([| 2L; 4L |])
              let expectArg name f =
                  try
                      f () |> ignore
                      failtestf "expected an ArgumentException for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name (sprintf "parameter %s" name)
              let d = Sampling.flow
              expectArg "eps" (fun () -> sampleFrom { d with Schedule = Schedule.uniform 10 0.0 } xT)
              expectArg "eps" (fun () -> sampleFrom { d with Schedule = Schedule.uniform 10 1.0 } xT)
              expectArg "steps" (fun () -> sampleFrom (fixedFlow OdeSolver.Heun TimeGrid.Uniform 0 1e-3) xT)
              expectArg "rtol" (fun () -> sampleFrom (flowWith (OdeMethod.dopri5 -1.0 1e-5)) xT)
              expectArg "grid" (fun () -> sampleFrom { d with Schedule = Schedule.ofTimes [| 1.0; 0.1 |] } xT)
              expectArg "xT" (fun () -> sampleFrom d (torch.zeros ([| 2L |], dtype = torch.int32)))
              expectArg "x0" (fun () ->
                  Sampler.encode sde noiseModel (OdeMethod.dopri5 1e-5 1e-5) d.Schedule (torch.zeros ([| 2L |], dtype = torch.int32)))
              expectArg "eps" (fun () -> Sampler.encode sde noiseModel (OdeMethod.dopri5 1e-5 1e-5) (Schedule.uniform 10 Double.NaN) xT)
          } ]
