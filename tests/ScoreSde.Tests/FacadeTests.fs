module ScoreSde.Tests.FacadeTests

open System
open Expecto
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Tests.Common

let private gauss = PredictorTests.gauss
let private coreSde = ScoreSde.Sde.standardVp

/// The exact Gaussian model as a C# delegate.
let private model = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel coreSde gauss)

[<Tests>]
let tests =
    testList
        "C# facade: VpSde and Sampler"
        [ test "VpSde exposes the closed forms" {
              let sde = VpSde()
              close 1e-15 (sde.Beta 0.5) (0.1 + 0.5 * 19.9) "beta"
              let m = -0.25 * 0.09 * 19.9 - 0.5 * 0.3 * 0.1
              closeRel 1e-14 (sde.Alpha 0.3) (exp m) "alpha"
              closeRel 1e-14 (sde.Sigma 0.3) (sqrt (1.0 - exp (2.0 * m))) "sigma"
              closeRel 1e-12 (sde.Lambda 0.3) (m - 0.5 * log (1.0 - exp (2.0 * m))) "lambda"
              Expect.throwsT<ArgumentException> (fun () -> VpSde(betaMin = -1.0) |> ignore) "bad betaMin"
          }

          test "SubVpSde and VeSde expose their closed forms; bad parameters are named" {
              let sub = SubVpSde()
              let ve = VeSde()
              for t in [ 1e-3; 0.3; 1.0 ] do
                  let m = -0.25 * t * t * 19.9 - 0.5 * t * 0.1
                  closeRel 1e-14 (sub.Alpha t) (exp m) "sub-VP alpha"
                  closeRel 1e-12 (sub.Sigma t) (1.0 - exp (2.0 * m)) "sub-VP sigma = 1 - alpha^2"
                  Expect.equal (ve.Alpha t) 1.0 "VE alpha"
                  closeRel 1e-13 (ve.Sigma t) (0.01 * 5000.0 ** t) "VE sigma"
                  closeRel 1e-10 (ve.TimeOfLambda(ve.Lambda t)) t "VE lambda inverse"
                  closeRel 1e-10 (sub.TimeOfLambda(sub.Lambda t)) t "sub-VP lambda inverse"
              Expect.equal ve.PriorStd 50.0 "VE prior std"
              Expect.equal (sub.Beta 0.5) (0.1 + 0.5 * 19.9) "sub-VP beta"
              Expect.equal [ VpSde().Name; sub.Name; ve.Name ] [ "vp"; "subvp"; "ve" ] "names"
              for f, name in
                  [ (fun () -> SubVpSde(betaMin = 0.0) :> Sde), "betaMin"
                    (fun () -> VeSde(sigmaMin = 1.0, sigmaMax = 0.5) :> Sde), "sigmaMax"
                    (fun () -> VeSde(sigmaMin = -1.0) :> Sde), "sigmaMin" ] do
                  try
                      f () |> ignore
                      failtestf "expected an ArgumentException for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name "parameter"
          }

          test "every sampler and the likelihood take any of the three SDEs" {
              let pairs: (string * Sde * ScoreSde.Sde) list =
                  [ "VP", VpSde(), ScoreSde.Sde.standardVp
                    "sub-VP", SubVpSde(), ScoreSde.Sde.standardSubVp
                    "VE", VeSde(), ScoreSde.Sde.standardVe ]
              for name, sde, core in pairs do
                  let m = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel core gauss)
                  let check (what: string) (r: SampleResult) =
                      use x = r.Samples
                      let ms, ss = moments x
                      // 20,000 samples: Monte Carlo standard errors below 0.007 (means) and 0.005 (stds);
                      // 0.03 is over 4 of them plus the samplers' small discretisation errors
                      for d in 0..3 do
                          close 0.03 ms.[d] gauss.Mu.[d] (sprintf "%s %s mean %d (seed 19)" name what d)
                          close 0.03 ss.[d] gauss.S.[d] (sprintf "%s %s std %d (seed 19)" name what d)
                  let shape = [| 20000L; 4L |]
                  let o = PcOptions(Steps = 500, Corrector = Corrector.None, Dtype = torch.float64)
                  check "PC" (Sampler.PredictorCorrector(sde, m, shape, o, generator 19L))
                  check "probability flow" (Sampler.ProbabilityFlow(sde, m, shape, OdeOptions(Dtype = torch.float64), generator 19L))
                  check "DPM-Solver" (Sampler.DpmSolver(sde, m, shape, DpmSolverOptions(Dtype = torch.float64), generator 19L))
                  // the likelihood of a few points against the closed form (the flow is affine per dimension)
                  use g = generator 20L
                  use x =
                      torch.randn ([| 6L; 4L |], dtype = torch.float64, generator = g) * 0.4
                      + torch.tensor (gauss.Mu, dtype = torch.float64)
                  use r = Likelihood.Compute(sde, m, x, LikelihoodOptions())
                  let lp, xs = values r.LogLikelihood, values x
                  let p = sde.PriorStd ** 2.0
                  for i in 0..5 do
                      let mutable expected = 0.0
                      for d in 0..3 do
                          let m0, v0 = gauss.MarginalAt core 1e-5 d
                          let m1, v1 = gauss.MarginalAt core 1.0 d
                          let z = m1 + sqrt (v1 / v0) * (xs.[4 * i + d] - m0)
                          expected <- expected - 0.5 * log (2.0 * Math.PI * p) - 0.5 * z * z / p + 0.5 * log (v1 / v0)
                      close 1e-3 lp.[i] expected (sprintf "%s log p sample %d (seed 20)" name i)
          }

          test "PredictorCorrector samples the Gaussian with the requested dtype, shape and NFE" {
              for predictor, corrector, steps in
                  [ Predictor.ReverseDiffusion, Corrector.Langevin, 300
                    Predictor.EulerMaruyama, Corrector.None, 300
                    Predictor.AncestralSampling, Corrector.AnnealedLangevin, 300 ] do
                  use g = generator 17L
                  let opts = PcOptions(Steps = steps, Predictor = predictor, Corrector = corrector, Dtype = torch.float64)
                  let model64 = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel coreSde gauss64)
                  let r = Sampler.PredictorCorrector(VpSde(), model64, [| 4000L; 64L |], opts, g)
                  use x = r.Samples
                  Expect.equal x.dtype torch.float64 "dtype"
                  Expect.equal x.shape [| 4000L; 64L |] "shape"
                  Expect.equal r.Nfe (steps * (if corrector = Corrector.None then 1 else 2)) "NFE"
                  let ms, ss = moments x
                  // Monte Carlo floor ~0.015 plus the per-sample Langevin bias (see the corrector tests)
                  Expect.isLessThan (averageMomentError gauss64 ms ss) 0.04 (sprintf "%A+%A moments (seed 17)" predictor corrector)
          }

          test "PcOptions' defaults are the core's Sampling.pc (batch-averaged Langevin norms)" {
              let facade =
                  use g = generator 6L
                  let r = Sampler.PredictorCorrector(VpSde(), model, [| 16L; 4L |], PcOptions(Steps = 25), g)
                  use x = r.Samples
                  values x
              let core =
                  use g = generator 6L
                  let noise = ScoreSde.Noise.fromGenerator g
                  use xT = ScoreSde.Sampler.prior coreSde [| 16L; 4L |] torch.float32 torch.CPU noise
                  let sampling = { ScoreSde.Sampling.pc with Schedule = ScoreSde.Schedule.uniform 25 1e-3 }
                  let r = ScoreSde.Sampler.sample coreSde (ScoreSde.Model.noise (gaussianNoiseModel coreSde gauss)) sampling noise xT
                  use x = r.Samples
                  values x
              Expect.sequenceEqual facade core "same samples"
              let perSample =
                  use g = generator 6L
                  let o = PcOptions(Steps = 25, LangevinNorm = LangevinNorm.PerSample)
                  let r = Sampler.PredictorCorrector(VpSde(), model, [| 16L; 4L |], o, g)
                  use x = r.Samples
                  values x
              Expect.notEqual perSample core "LangevinNorm.PerSample is another corrector"
          }

          test "a score model is declared with Prediction = Score" {
              use g = generator 18L
              let scoreModel = Func<Tensor, Tensor, Tensor>(gaussianScoreModel coreSde gauss)
              let opts = PcOptions(Steps = 300, Prediction = ModelPrediction.Score, Corrector = Corrector.None)
              let r = Sampler.PredictorCorrector(VpSde(), scoreModel, [| 20000L; 4L |], opts, g)
              use x = r.Samples
              let ms, ss = moments x
              for d in 0..3 do
                  close 0.03 ms.[d] gauss.Mu.[d] (sprintf "mean %d (seed 18)" d)
                  close 0.03 ss.[d] gauss.S.[d] (sprintf "std %d (seed 18)" d)
          }

          test "the same generator seed reproduces the same samples" {
              let run () =
                  use g = generator 5L
                  let r = Sampler.PredictorCorrector(VpSde(), model, [| 3L; 4L |], PcOptions(Steps = 20), g)
                  let v = values r.Samples
                  r.Samples.Dispose()
                  v
              Expect.sequenceEqual (run ()) (run ()) "reproducible"
          }

          test "NoiseSource.PerSample: a sample does not depend on the batch it is drawn in" {
              // PC (the annealed corrector: the samples do not interact), probability flow and
              // DPM-Solver: the first 2 samples of a batch of 2 and of a batch of 5 agree, with a given
              // seed and with the seed drawn from same-seeded generators. The generator's stream would
              // give different samples (the prior of the larger batch is a different draw).
              let shape n = [| n; 4L |]
              let runs: (string * (int64 -> Nullable<int64> -> NoiseSource -> Tensor)) list =
                  [ "PC",
                    (fun n seed src ->
                        use g = generator 21L
                        let o =
                            PcOptions(
                                Steps = 30,
                                Corrector = Corrector.AnnealedLangevin,
                                Noise = src,
                                NoiseSeed = seed,
                                Dtype = torch.float64
                            )
                        (Sampler.PredictorCorrector(VpSde(), model, shape n, o, g)).Samples)
                    "probability flow",
                    (fun n seed src ->
                        use g = generator 21L
                        let o =
                            OdeOptions(
                                Solver = OdeSolver.Rk4,
                                Steps = 20,
                                PerSampleStepControl = true,
                                Noise = src,
                                NoiseSeed = seed,
                                Dtype = torch.float64
                            )
                        (Sampler.ProbabilityFlow(VpSde(), model, shape n, o, g)).Samples)
                    "DPM-Solver",
                    (fun n seed src ->
                        use g = generator 21L
                        let o = DpmSolverOptions(Steps = 10, Noise = src, NoiseSeed = seed, Dtype = torch.float64)
                        (Sampler.DpmSolver(VpSde(), model, shape n, o, g)).Samples) ]
              for name, run in runs do
                  for seed in [ Nullable 77L; Nullable() ] do
                      use small = run 2L seed NoiseSource.PerSample
                      use big = run 5L seed NoiseSource.PerSample
                      use head = big.narrow (0L, 0L, 2L)
                      let a, b = values small, values head
                      for i in 0 .. a.Length - 1 do
                          close 1e-12 a.[i] b.[i] (sprintf "%s, seed %A: element %d of the first two samples" name seed i)
                  use gs = run 2L (Nullable()) NoiseSource.Generator
                  use gb = run 5L (Nullable()) NoiseSource.Generator
                  use gh = gb.narrow (0L, 0L, 2L)
                  Expect.isFalse (same gs gh) (sprintf "%s: the generator's stream depends on the batch size" name)
          }

          test "NoiseSource.Fast: reproducible from its seed or the generator, and a different stream" {
              let run (seed: Nullable<int64>) (src: NoiseSource) (gseed: int64) =
                  use g = generator gseed
                  let o = PcOptions(Steps = 20, Corrector = Corrector.None, Noise = src, NoiseSeed = seed)
                  let r = Sampler.PredictorCorrector(VpSde(), model, [| 64L; 4L |], o, g)
                  let v = values r.Samples
                  r.Samples.Dispose()
                  v
              Expect.sequenceEqual
                  (run (Nullable 5L) NoiseSource.Fast 1L)
                  (run (Nullable 5L) NoiseSource.Fast 2L)
                  "a given seed fixes the run (whatever the generator)"
              Expect.sequenceEqual
                  (run (Nullable()) NoiseSource.Fast 3L)
                  (run (Nullable()) NoiseSource.Fast 3L)
                  "the seed drawn from a seeded generator"
              Expect.notEqual
                  (run (Nullable()) NoiseSource.Fast 3L)
                  (run (Nullable()) NoiseSource.Fast 4L)
                  "other generator seed, other run"
              Expect.notEqual
                  (run (Nullable()) NoiseSource.Fast 3L)
                  (run (Nullable()) NoiseSource.Generator 3L)
                  "not the generator's stream"
              let v = run (Nullable 9L) NoiseSource.Fast 1L
              Expect.isTrue (v |> Array.forall (fun x -> not (Double.IsNaN x || Double.IsInfinity x))) "finite samples"
          }

          test "bad options are rejected naming the option" {
              let expectArg (name: string) (f: unit -> obj) =
                  try
                      f () |> ignore
                      failtestf "expected an ArgumentException for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name (sprintf "parameter %s" name)
              let run (opts: PcOptions) (shape: int64[]) = box (Sampler.PredictorCorrector(VpSde(), model, shape, opts))
              expectArg "options.Steps" (fun () -> run (PcOptions(Steps = 0)) [| 2L; 4L |])
              expectArg "options.Eps" (fun () -> run (PcOptions(Eps = 0.0)) [| 2L; 4L |])
              expectArg "options.Snr" (fun () -> run (PcOptions(Snr = 0.0)) [| 2L; 4L |])
              expectArg "options.CorrectorSteps" (fun () -> run (PcOptions(CorrectorSteps = 0)) [| 2L; 4L |])
              expectArg "shape" (fun () -> run (PcOptions()) [| 0L; 4L |])
              expectArg "shape" (fun () -> run (PcOptions()) null)
              expectArg "options.Dtype" (fun () -> run (PcOptions(Dtype = torch.int32)) [| 2L; 4L |])
              expectArg "options.Predictor" (fun () -> run (PcOptions(Predictor = enum 42)) [| 2L; 4L |])
              expectArg "options.Noise" (fun () -> run (PcOptions(Noise = enum 42)) [| 2L; 4L |])
              expectArg "options.LangevinNorm" (fun () -> run (PcOptions(LangevinNorm = enum 42)) [| 2L; 4L |])
              expectArg "options.Prediction" (fun () -> run (PcOptions(Prediction = enum 42)) [| 2L; 4L |])
              expectArg "options.Noise" (fun () -> box (Sampler.ProbabilityFlow(VpSde(), model, [| 2L; 4L |], OdeOptions(Noise = enum 42))))
              expectArg "options.Noise" (fun () -> box (Sampler.DpmSolver(VpSde(), model, [| 2L; 4L |], DpmSolverOptions(Noise = enum 42))))
              expectArg "model" (fun () -> box (Sampler.PredictorCorrector(VpSde(), null, [| 2L |], PcOptions())))
              expectArg "options" (fun () -> box (Sampler.PredictorCorrector(VpSde(), model, [| 2L |], null)))
          } ]
