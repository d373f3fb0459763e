/// Bad input at every entry point (issue 11, item 3): disposed generators, model outputs of the
/// wrong dtype, non-finite values, empty batches, the facade's messages.
module ScoreSde.Tests.BadInputTests

open System
open System.Text.RegularExpressions
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let private gauss = PredictorTests.gauss
let private model = Model.noise (gaussianNoiseModel sde gauss)

/// One sampling configuration per method the entry point runs.
let methods =
    let dpm m = { Sampling.dpmSolver with Method = Method.DpmSolver { DpmSolver.defaults with Method = m } }
    [ "PC", { Sampling.pc with Schedule = Schedule.uniform 20 1e-3 }
      "flow, RK4", fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 20 1e-3
      "flow, Dopri5", Sampling.flow
      "DPM-Solver multistep", dpm DpmMethod.MultiStep
      "DPM-Solver single-step", dpm DpmMethod.SingleStep
      "DPM-Solver adaptive", dpm (DpmMethod.Adaptive DpmSolver.adaptiveDefaults) ]

/// A model that returns NaN from its `k`th call on (exact Gaussian before).
let nanFrom (k: int) =
    let calls = ref 0
    Model.noise (fun x t ->
        calls.Value <- calls.Value + 1
        let out = gaussianNoiseModel sde gauss x t
        if calls.Value >= k then
            use nan = sc Double.NaN
            out.fill_ (nan) |> ignore
        out)

/// A model whose outputs are finite but so large that the first update overflows the state.
let overflowing = Model.noise (fun x _ -> torch.full_like (x, sc 1e308))

/// The facade's message without .NET's " (Parameter 'x')" suffix.
let private own (e: exn) = Regex.Replace(e.Message, @"\s*\(Parameter '[^']*'\)", "")

[<Tests>]
let tests =
    testList
        "Bad input"
        [ test "a disposed generator is an ObjectDisposedException naming it, wherever a generator enters" {
              let disposed () =
                  let g = generator 1L
                  g.Dispose()
                  g
              let expectDisposed (what: string) (f: unit -> unit) =
                  let e = throwsOf<ObjectDisposedException> what f
                  Expect.equal e.ObjectName "generator" (sprintf "%s: names the parameter" what)
                  Expect.stringContains e.Message "disposed torch.Generator" (sprintf "%s: says why" what)
              use xT = torch.randn ([| 4L; 4L |], dtype = torch.float64)
              expectDisposed "Noise.fromGenerator" (fun () -> Noise.fromGenerator (disposed ()) |> ignore)
              // disposed after wrapping: refused at the next draw (before drawing from the global generator)
              let g = generator 2L
              let noise = Noise.fromGenerator g
              g.Dispose()
              expectDisposed "a draw after disposal" (fun () -> Sampler.sample sde model Sampling.pc noise xT |> ignore)
              expectDisposed "Datasets.sample" (fun () -> ToyDataset.sample ToyDataset.Ring 4 torch.float32 (disposed ()) |> ignore)
              expectDisposed "ScoreNet" (fun () -> (new ScoreNet(ScoreNet.defaultConfig 2, disposed ())).Dispose())
              use live = generator 3L
              use net = new ScoreNet(ScoreNet.defaultConfig 2, live)
              use data = torch.randn ([| 8L; 2L |])
              expectDisposed "Training.train" (fun () ->
                  Training.train sde { Training.defaults with Steps = 1; BatchSize = 4 } net data (disposed ())
                  |> ignore)
              // the C# facade: every sampler, the likelihood and both schedulers' steps
              let m = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel sde gauss)
              let shape = [| 4L; 4L |]
              let vp = ScoreSde.CSharp.VpSde()
              expectDisposed "C# PredictorCorrector" (fun () ->
                  ScoreSde.CSharp.Sampler.PredictorCorrector(vp, m, shape, ScoreSde.CSharp.PcOptions(Steps = 2), disposed ())
                  |> ignore)
              expectDisposed "C# PredictorCorrector, Fast noise seeded from the generator" (fun () ->
                  ScoreSde.CSharp.Sampler.PredictorCorrector(
                      vp,
                      m,
                      shape,
                      ScoreSde.CSharp.PcOptions(Steps = 2, Noise = ScoreSde.CSharp.NoiseSource.Fast),
                      disposed ()
                  )
                  |> ignore)
              expectDisposed "C# ProbabilityFlow" (fun () ->
                  ScoreSde.CSharp.Sampler.ProbabilityFlow(vp, m, shape, ScoreSde.CSharp.OdeOptions(), disposed ())
                  |> ignore)
              expectDisposed "C# DpmSolver" (fun () ->
                  ScoreSde.CSharp.Sampler.DpmSolver(vp, m, shape, ScoreSde.CSharp.DpmSolverOptions(), disposed ())
                  |> ignore)
              expectDisposed "C# Likelihood" (fun () ->
                  let o = ScoreSde.CSharp.LikelihoodOptions(Estimator = ScoreSde.CSharp.DivergenceEstimator.HutchinsonRademacher)
                  ScoreSde.CSharp.Likelihood.Compute(vp, m, xT, o, disposed ()) |> ignore)
              let vpScheduler = ScoreSde.CSharp.ScoreSdeVpScheduler()
              vpScheduler.SetTimesteps 10
              use x32 = torch.randn ([| 4L; 4L |])
              use t = torch.tensor (0.5f)
              expectDisposed "C# VP StepPred" (fun () -> vpScheduler.StepPred(x32, x32, t, disposed ()) |> ignore)
              expectDisposed "C# VP StepCorrect" (fun () -> vpScheduler.StepCorrect(x32, x32, t, disposed ()) |> ignore)
              let ve = ScoreSde.CSharp.ScoreSdeVeScheduler()
              ve.SetTimesteps 10
              ve.SetSigmas 10
              expectDisposed "C# VE StepPred" (fun () -> ve.StepPred(x32, t, x32, disposed ()) |> ignore)
              expectDisposed "C# VE StepCorrect" (fun () -> ve.StepCorrect(x32, x32, disposed ()) |> ignore)
          }

          test "an integer model output is refused naming both dtypes, in every method, encoding and the likelihood" {
              let intModel = Model.noise (fun x _ -> torch.zeros_like (x, dtype = torch.int64))
              use g = generator 5L
              let noise = Noise.fromGenerator g
              use xT = torch.randn ([| 4L; 4L |], dtype = torch.float64, generator = g)
              let expectDtype (what: string) (f: unit -> unit) =
                  let e = throwsOf<InvalidOperationException> what f
                  Expect.stringContains e.Message "Int64" (sprintf "%s: the output's dtype" what)
                  Expect.stringContains e.Message "Float64" (sprintf "%s: the expected dtype" what)
              for name, sampling in methods do
                  expectDtype name (fun () -> Sampler.sample sde intModel sampling noise xT |> ignore)
              expectDtype "encode" (fun () ->
                  Sampler.encode sde intModel (OdeMethod.FixedStep OdeSolver.Rk4) Sampling.flow.Schedule xT |> ignore)
              expectDtype "likelihood" (fun () -> (Likelihood.compute sde intModel Likelihood.defaults noise xT :> IDisposable).Dispose())
              // the schedulers' steps take the output as a parameter: an ArgumentException naming it
              let vp = ScoreSde.CSharp.ScoreSdeVpScheduler()
              vp.SetTimesteps 10
              use x = torch.randn ([| 4L; 2L |])
              use out = torch.zeros ([| 4L; 2L |], dtype = torch.int64)
              use t = torch.tensor (0.5f)
              for what, f, param in
                  [ "VP StepPred", (fun () -> vp.StepPred(out, x, t) |> ignore), "score"
                    "VP StepCorrect", (fun () -> vp.StepCorrect(out, x, t) |> ignore), "modelOutput" ] do
                  let e = throwsOf<ArgumentException> what f
                  Expect.equal e.ParamName param (sprintf "%s: parameter" what)
                  Expect.stringContains e.Message "Int64" (sprintf "%s: dtype" what)
          }

          test "a floating output of another precision is converted to the state's dtype, the same everywhere" {
              // A float32 output for a float64 state gives exactly what a model casting it back would.
              let narrow = Model.noise (fun x t -> (gaussianNoiseModel sde gauss x t).to_type(torch.float32))
              let castBack =
                  Model.noise (fun x t ->
                      use o = (gaussianNoiseModel sde gauss x t).to_type(torch.float32)
                      o.to_type (torch.float64))
              use g = generator 6L
              use xT = torch.randn ([| 6L; 4L |], dtype = torch.float64, generator = g)
              for name, sampling in methods do
                  let run m =
                      use g = generator 7L
                      let r = Sampler.sample sde m sampling (Noise.fromGenerator g) xT
                      use s = r.Samples
                      Expect.equal s.dtype torch.float64 (sprintf "%s: result dtype" name)
                      values s
                  Expect.sequenceEqual (run narrow) (run castBack) (sprintf "%s: converted output (seed 7)" name)
              let encode m =
                  let r = Sampler.encode sde m (OdeMethod.FixedStep OdeSolver.Rk4) Sampling.flow.Schedule xT
                  use l = r.Latent
                  values l
              Expect.sequenceEqual (encode narrow) (encode castBack) "encode"
              // the schedulers' steps: a float64 output on a float32 sample, as the same output in float32
              let vp = ScoreSde.CSharp.ScoreSdeVpScheduler()
              vp.SetTimesteps 10
              use x = torch.randn ([| 4L; 2L |], generator = g)
              use out64 = torch.randn ([| 4L; 2L |], dtype = torch.float64, generator = g)
              use out32 = out64.to_type (torch.float32)
              use t = torch.tensor (0.5f)
              let step (out: Tensor) =
                  use g = generator 8L
                  let r = vp.StepPred(out, x, t, g)
                  use s = r.PrevSample
                  use m = r.PrevSampleMean
                  Expect.equal s.dtype torch.float32 "StepPred: the sample's dtype"
                  values s
              Expect.sequenceEqual (step out64) (step out32) "VP StepPred"
              let ve = ScoreSde.CSharp.ScoreSdeVeScheduler()
              ve.SetTimesteps 10
              ve.SetSigmas 10
              let veStep (out: Tensor) =
                  use g = generator 9L
                  let r = ve.StepCorrect(out, x, g)
                  use s = r.PrevSample
                  use m = r.PrevSampleMean
                  values s
              Expect.sequenceEqual (veStep out64) (veStep out32) "VE StepCorrect"
          }

          test "every method stops at the first non-finite model output, naming the step and the time" {
              use g = generator 10L
              let noise = Noise.fromGenerator g
              use xT = torch.randn ([| 4L; 4L |], dtype = torch.float64, generator = g)
              for name, sampling in methods do
                  // the first evaluations of each method are finite; from the 5th call on, NaN
                  let e = throwsOf<NonFiniteException> name (fun () -> Sampler.sample sde (nanFrom 5) sampling noise xT |> ignore)
                  Expect.equal e.Source NonFiniteSource.ModelOutput (sprintf "%s: the model's output" name)
                  Expect.isTrue (e.Time > 0.0 && e.Time <= 1.0) (sprintf "%s: a time in (0, 1] (got %g)" name e.Time)
                  Expect.isTrue (e.Step >= 0 && e.Step <= 4) (sprintf "%s: the step under way (got %d)" name e.Step)
                  Expect.stringContains e.Message (sprintf "at step %d (t = %g)" e.Step e.Time) (sprintf "%s: message" name)
                  Expect.stringContains e.Message "The model produced a non-finite output" (sprintf "%s: blames the model" name)
                  Expect.isFalse (e.Message.Contains "more steps") (sprintf "%s: no step-size advice" name)
              // PC's first evaluation is the corrector's at t = 1: a NaN from the first call is step 0 at t = 1
              let e =
                  throwsOf<NonFiniteException> "PC, first call" (fun () -> Sampler.sample sde (nanFrom 1) Sampling.pc noise xT |> ignore)
              Expect.equal (e.Step, e.Time) (0, 1.0) "PC: step 0 at t = 1"
              // RK4 on 20 uniform steps from 1 to 1e-3: four evaluations per step, the 5th is step 1's first
              let rk4 = fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 20 1e-3
              let e = throwsOf<NonFiniteException> "RK4" (fun () -> Sampler.sample sde (nanFrom 5) rk4 noise xT |> ignore)
              Expect.equal e.Step 1 "RK4: step 1"
              close 1e-12 e.Time (1.0 - (1.0 - 1e-3) / 20.0) "RK4: step 1 starts at t_1"
          }

          test "a state that overflows stops the run as a state error; CheckFinite = false returns the NaN" {
              use g = generator 11L
              let noise = Noise.fromGenerator g
              use xT = torch.randn ([| 4L; 4L |], dtype = torch.float64, generator = g)
              let pc = { Sampling.pc with Schedule = Schedule.uniform 20 1e-3 }
              let rk4 = fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 20 1e-3
              for name, sampling in [ "PC", pc; "flow, RK4", rk4 ] do
                  let e = throwsOf<NonFiniteException> name (fun () -> Sampler.sample sde overflowing sampling noise xT |> ignore)
                  Expect.equal e.Source NonFiniteSource.State (sprintf "%s: the state" name)
                  Expect.isTrue (e.Step <= 2) (sprintf "%s: within the first steps (got %d)" name e.Step)
                  Expect.stringContains e.Message "more steps" (sprintf "%s: step-size advice for a state" name)
                  let r = Sampler.sample sde overflowing { sampling with CheckFinite = false } noise xT
                  use s = r.Samples
                  Expect.isFalse (allFinite s) (sprintf "%s: unchecked, the run returns what it computed" name)
              // NaN from the model, unchecked: NaN samples, no exception (the published behaviour)
              let r = Sampler.sample sde (nanFrom 3) { pc with CheckFinite = false } noise xT
              use s = r.Samples
              Expect.isFalse (allFinite s) "unchecked NaN model"
              // the C# option
              let m = Func<Tensor, Tensor, Tensor>(fun x _ -> torch.full_like (x, sc nan))
              let vp = ScoreSde.CSharp.VpSde()
              throwsOf<NonFiniteException> "C# default" (fun () ->
                  ScoreSde.CSharp.Sampler.PredictorCorrector(vp, m, [| 2L; 2L |], ScoreSde.CSharp.PcOptions(Steps = 3))
                  |> ignore)
              |> ignore
              let r =
                  ScoreSde.CSharp.Sampler.PredictorCorrector(vp, m, [| 2L; 2L |], ScoreSde.CSharp.PcOptions(Steps = 3, CheckFinite = false))
              use s = r.Samples
              Expect.isFalse (allFinite s) "C# CheckFinite = false"
          }

          test "the non-finite error path leaves no tensor behind (live-tensor counts, every method)" {
              let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
              use g = generator 12L
              let noise = Noise.fromGenerator g
              use xT = torch.randn ([| 8L; 4L |], dtype = torch.float64, generator = g)
              let pc = { Sampling.pc with Schedule = Schedule.uniform 20 1e-3 }
              let rk4 = fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 20 1e-3
              let runs =
                  [ for name, sampling in methods ->
                        sprintf "%s, NaN output" name, (fun () -> Sampler.sample sde (nanFrom 7) sampling noise xT)
                    for name, sampling in [ "PC", pc; "flow, RK4", rk4 ] ->
                        sprintf "%s, overflowing state" name, (fun () -> Sampler.sample sde overflowing sampling noise xT) ]
              for name, run in runs do
                  let before = live ()
                  throwsOf<NonFiniteException> name (fun () -> run () |> ignore) |> ignore
                  Expect.equal (live ()) before (sprintf "%s: live tensors after the error" name)
          }

          test "the schedulers' steps refuse an empty batch naming the parameter and its shape" {
              let vp = ScoreSde.CSharp.ScoreSdeVpScheduler()
              vp.SetTimesteps 10
              let ve = ScoreSde.CSharp.ScoreSdeVeScheduler()
              ve.SetTimesteps 10
              ve.SetSigmas 10
              use empty = torch.zeros ([| 0L; 2L |])
              use t = torch.tensor (0.5f)
              for what, f, param in
                  [ "VP StepPred", (fun () -> vp.StepPred(empty, empty, t) |> ignore), "x"
                    "VP StepCorrect", (fun () -> vp.StepCorrect(empty, empty, t) |> ignore), "x"
                    "VE StepPred", (fun () -> ve.StepPred(empty, t, empty) |> ignore), "sample"
                    "VE StepCorrect", (fun () -> ve.StepCorrect(empty, empty) |> ignore), "sample" ] do
                  let e = throwsOf<ArgumentException> what f
                  Expect.equal e.ParamName param (sprintf "%s: parameter" what)
                  Expect.stringContains e.Message "[0, 2]" (sprintf "%s: shape" what)
                  Expect.stringContains e.Message "at least one sample" (sprintf "%s: requirement" what)
          }

          test "C# messages name options as options.X once and print shapes as [4, 2]" {
              let m = Func<Tensor, Tensor, Tensor>(fun x _ -> torch.zeros_like (x))
              let vp = ScoreSde.CSharp.VpSde()
              let shape = [| 4L; 2L |]
              let vpScheduler = ScoreSde.CSharp.ScoreSdeVpScheduler()
              vpScheduler.SetTimesteps 10
              use x = torch.zeros ([| 4L; 2L |])
              use wrong = torch.zeros ([| 3L; 2L |])
              use t = torch.tensor (0.5f)
              let cases: (string * (unit -> unit) * string * string) list =
                  [ "PC steps",
                    (fun () ->
                        ScoreSde.CSharp.Sampler.PredictorCorrector(vp, m, shape, ScoreSde.CSharp.PcOptions(Steps = 0))
                        |> ignore),
                    "options.Steps",
                    "options.Steps must be at least 1 (got 0)."
                    "PC eps",
                    (fun () ->
                        ScoreSde.CSharp.Sampler.PredictorCorrector(vp, m, shape, ScoreSde.CSharp.PcOptions(Eps = 2.0))
                        |> ignore),
                    "options.Eps",
                    "options.Eps must be in (0, 1) (got 2.0)."
                    "PC snr",
                    (fun () ->
                        ScoreSde.CSharp.Sampler.PredictorCorrector(vp, m, shape, ScoreSde.CSharp.PcOptions(Snr = -1.0))
                        |> ignore),
                    "options.Snr",
                    "options.Snr must be positive (got -1.0)."
                    "PC corrector steps",
                    (fun () ->
                        ScoreSde.CSharp.Sampler.PredictorCorrector(vp, m, shape, ScoreSde.CSharp.PcOptions(CorrectorSteps = 0))
                        |> ignore),
                    "options.CorrectorSteps",
                    "options.CorrectorSteps must be at least 1 (got 0)."
                    "ODE latent",
                    (fun () ->
                        ScoreSde.CSharp.Sampler.ProbabilityFlow(vp, m, shape, ScoreSde.CSharp.OdeOptions(Latent = wrong))
                        |> ignore),
                    "options.Latent",
                    "options.Latent has shape [3, 2] but shape is [4, 2]; they must match."
                    "ODE rtol",
                    (fun () ->
                        ScoreSde.CSharp.Sampler.ProbabilityFlow(vp, m, shape, ScoreSde.CSharp.OdeOptions(Rtol = -1.0))
                        |> ignore),
                    "options.Rtol",
                    "options.Rtol must be positive (got -1.0)."
                    "DPM steps",
                    (fun () ->
                        ScoreSde.CSharp.Sampler.DpmSolver(vp, m, shape, ScoreSde.CSharp.DpmSolverOptions(Steps = 0))
                        |> ignore),
                    "options.Steps",
                    "options.Steps must be at least 1 (got 0)."
                    "sample shape",
                    (fun () ->
                        ScoreSde.CSharp.Sampler.PredictorCorrector(vp, m, [| 0L; 2L |], ScoreSde.CSharp.PcOptions())
                        |> ignore),
                    "shape",
                    "shape must be all positive sizes (got [0, 2])."
                    "StepPred shapes",
                    (fun () -> vpScheduler.StepPred(wrong, x, t) |> ignore),
                    "score",
                    "score has shape [3, 2] but x has shape [4, 2]; they must match." ]
              for what, f, param, message in cases do
                  let e = throwsOf<ArgumentException> what f
                  Expect.equal e.ParamName param (sprintf "%s: parameter" what)
                  let text = own e
                  Expect.equal text message (sprintf "%s: message" what)
                  Expect.isFalse (text.Contains "[|") (sprintf "%s: no F# array syntax" what)
                  Expect.equal (Regex.Matches(text, Regex.Escape param + @"\b").Count) 1 (sprintf "%s: named once" what)
              // a model's wrong output shape, C#-style shapes too
              let bad = Func<Tensor, Tensor, Tensor>(fun _ _ -> torch.zeros (3L))
              let e =
                  throwsOf<InvalidOperationException> "model shape" (fun () ->
                      ScoreSde.CSharp.Sampler.PredictorCorrector(vp, bad, shape, ScoreSde.CSharp.PcOptions(Steps = 2))
                      |> ignore)
              Expect.stringContains e.Message "returned shape [3] for input shape [4, 2]" "model shape message"
          } ]
