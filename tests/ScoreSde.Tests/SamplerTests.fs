module ScoreSde.Tests.SamplerTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let private gauss = PredictorTests.gauss
let private model = Model.noise (gaussianNoiseModel sde gauss)

[<Tests>]
let tests =
    testList
        "Samplers"
        [ test "PC sampler: NFE, observer, grid and input ownership" {
              use g = generator 1L
              let noise = Noise.fromGenerator g
              use xT = Sampler.prior sde [| 6L; 4L |] torch.float32 torch.CPU noise
              use copy = xT.clone ()
              let seen = ResizeArray()
              let sampling =
                  { Sampling.pc with
                      Method = Method.PredictorCorrector(Predictor.ReverseDiffusion, Corrector.langevin 0.16 2)
                      Schedule = Schedule.ofTimes [| 1.0; 0.6; 0.2; 0.01 |]
                      Observer = Some(fun i t x -> seen.Add((i, t, x.shape))) }
              let r = Sampler.sample sde model sampling noise xT
              use x = r.Samples
              Expect.equal r.Nfe (3 * (1 + 2)) "3 steps of 1 predictor + 2 corrector evaluations"
              Expect.sequenceEqual (seen |> Seq.map (fun (i, t, _) -> i, t)) [ 0, 0.6; 1, 0.2; 2, 0.01 ] "observer sees every step"
              Expect.isTrue (same xT copy) "xT untouched"
              Expect.isFalse (obj.ReferenceEquals(x, xT)) "fresh result"
          }

          test "the model sees one time per batch element, in [eps, 1], in the state's dtype" {
              for dtype in [ torch.float32; torch.float64 ] do
                  let times = ResizeArray()
                  let spy =
                      Model.noise (fun x t ->
                          Expect.equal t.shape [| x.shape.[0] |] "t shape"
                          Expect.equal t.dtype x.dtype "t dtype"
                          times.AddRange(values t)
                          torch.zeros_like (x))
                  use g = generator 2L
                  let noise = Noise.fromGenerator g
                  use xT = Sampler.prior sde [| 3L; 2L |] dtype torch.CPU noise
                  let r = Sampler.sample sde spy { Sampling.pc with Schedule = Schedule.uniform 10 1e-3 } noise xT
                  r.Samples.Dispose()
                  Expect.isTrue (times |> Seq.forall (fun t -> t >= 1e-3 - 1e-7 && t <= 1.0)) "times in [eps, 1]"
                  Expect.equal times.Count (3 * 20) "3 per evaluation, 20 evaluations"
          }

          test "seeded runs reproduce; the global generator is never used" {
              let before = values (torch.random.get_rng_state ())
              let once () =
                  use g = generator 33L
                  let noise = Noise.fromGenerator g
                  use xT = Sampler.prior sde [| 5L; 4L |] torch.float32 torch.CPU noise
                  let r = Sampler.sample sde model { Sampling.pc with Schedule = Schedule.uniform 30 1e-3 } noise xT
                  let v = values r.Samples
                  r.Samples.Dispose()
                  v
              Expect.sequenceEqual (once ()) (once ()) "same seed, same samples"
              Expect.sequenceEqual (values (torch.random.get_rng_state ())) before "global RNG state unchanged"
          }

          test "denoise returns the last step's mean: without it, the last step adds noise" {
              let finalStd denoise =
                  use g = generator 3L
                  let noise = Noise.fromGenerator g
                  use xT = Sampler.prior sde [| 4000L; 4L |] torch.float64 torch.CPU noise
                  // with a single-step explicit grid the last step is the only step
                  let sampling =
                      { Sampling.pc with
                          Method = Method.PredictorCorrector(Predictor.ReverseDiffusion, Corrector.NoCorrector)
                          Schedule = Schedule.ofTimes [| 0.05; 0.01 |]
                          Finish = if denoise then Finish.LastMean else Finish.NoFinish }
                  let r = Sampler.sample sde model sampling noise xT
                  let _, s = moments r.Samples
                  r.Samples.Dispose()
                  s.[0]
              // x' = A x + B score (+ sqrt(beta_i) z): the noise adds variance beta_i to the same mean
              let bi = snd (Sde.transitionAt sde 0.05 0.01)
              let a, b = finalStd false, finalStd true
              closeRel 0.05 (a * a - b * b) bi "variance added by the final noise"
          }

          test "probability-flow sampler with Tweedie denoising counts one more evaluation and hits the data mean" {
              use g = generator 12L
              use xT = torch.randn ([| 20000L; 4L |], generator = g)
              let sampling =
                  { Sampling.flow with
                      Method = Method.ProbabilityFlow(OdeMethod.FixedStep OdeSolver.Rk4)
                      Schedule = Schedule.uniform 50 1e-3
                      Finish = Finish.Tweedie }
              let r = Sampler.sample sde model sampling (Noise.fromSeed 0L torch.CPU) xT
              use x = r.Samples
              Expect.equal r.Nfe (50 * 4 + 1) "RK4 evaluations + denoise"
              let ms, ss = moments x
              for d in 0..3 do
                  close (0.01 + 5.0 * gauss.S.[d] / sqrt 20000.0) ms.[d] gauss.Mu.[d] (sprintf "mean dim %d (seed 12)" d)
                  // Tweedie's mean of Gaussian data is linear in x_eps ~ N(a mu, v): its std is a s^2 / sqrt v
                  let _, v = gauss.MarginalAt sde 1e-3 d
                  let a = Math.Exp(-0.25 * 1e-6 * 19.9 - 0.05 * 1e-3)
                  let expected = a * gauss.S.[d] ** 2.0 / sqrt v
                  closeRel 0.01 ss.[d] expected (sprintf "std dim %d (seed 12)" d)
          }

          test "bad sampler inputs are rejected with the parameter named" {
              use g = generator 1L
              let noise = Noise.fromGenerator g
              use xT = torch.zeros (2L, 2L)
              let expectArg name f =
                  try
                      f () |> ignore
                      failtestf "expected an ArgumentException for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name (sprintf "parameter %s" name)
              let pc = Sampling.pc
              let run sampling = Sampler.sample sde model sampling noise xT
              expectArg "steps" (fun () -> run { pc with Schedule = Schedule.uniform 0 1e-3 })
              expectArg "eps" (fun () -> run { pc with Schedule = Schedule.uniform 10 1.5 })
              expectArg "snr" (fun () ->
                  run
                      { pc with
                          Method = Method.PredictorCorrector(Predictor.ReverseDiffusion, Corrector.langevin -0.1 1) })
              expectArg "steps" (fun () ->
                  run
                      { Sampling.flow with
                          Method = Method.ProbabilityFlow(OdeMethod.FixedStep OdeSolver.Rk4)
                          Schedule = Schedule.uniform -3 1e-3 })
              expectArg "xT" (fun () -> Sampler.sample sde model pc noise (torch.zeros ([| 2L |], dtype = torch.int64)))
              expectArg "shape" (fun () -> Sampler.prior sde [| 0L; 3L |] torch.float32 torch.CPU noise)
              expectArg "dtype" (fun () -> Sampler.prior sde [| 2L; 3L |] torch.int32 torch.CPU noise)
          }

          test "a model that throws mid-run leaves no tensor behind (every method, encoding, the likelihood)" {
              // The model fails on its 7th call; afterwards the live-tensor count is back where it started:
              // the working copy, the buffers and the model's own tensors are all disposed.
              let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
              let failing () =
                  let calls = ref 0
                  Model.noise (fun x t ->
                      calls.Value <- calls.Value + 1
                      if calls.Value = 7 then
                          raise (InvalidOperationException "model failure")
                      gaussianNoiseModel sde gauss x t)
              use g = generator 4L
              use xT = torch.randn ([| 8L; 4L |], dtype = torch.float64, generator = g)
              let noise = Noise.fromGenerator g
              let dpm m = { Sampling.dpmSolver with Method = Method.DpmSolver { DpmSolver.defaults with Method = m } }
              let samplingRuns =
                  [ for name, sampling in
                        [ "PC", Sampling.pc
                          "PC, data model", Sampling.pc
                          "flow, RK4", fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 20 1e-3
                          "flow, Dopri5", Sampling.flow
                          "DPM-Solver multistep", dpm DpmMethod.MultiStep
                          "DPM-Solver single-step", dpm DpmMethod.SingleStep
                          "DPM-Solver adaptive", dpm (DpmMethod.Adaptive DpmSolver.adaptiveDefaults) ] ->
                        name, (fun (m: Model) -> Sampler.sample sde m sampling noise xT |> ignore) ]
              let likelihoodRk4 = { Likelihood.defaults with Method = OdeMethod.FixedStep OdeSolver.Rk4 }
              let otherRuns: (string * (Model -> unit)) list =
                  [ "encode, Dopri5", (fun m -> Sampler.encode sde m (OdeMethod.dopri5 1e-5 1e-5) Sampling.flow.Schedule xT |> ignore)
                    "encode, RK4", (fun m -> Sampler.encode sde m (OdeMethod.FixedStep OdeSolver.Rk4) Sampling.flow.Schedule xT |> ignore)
                    "likelihood", (fun m -> (Likelihood.compute sde m Likelihood.defaults noise xT :> IDisposable).Dispose())
                    "likelihood, RK4", (fun m -> (Likelihood.compute sde m likelihoodRk4 noise xT :> IDisposable).Dispose()) ]
              let runs = samplingRuns @ otherRuns
              for name, run in runs do
                  let model = failing ()
                  let model = if name.EndsWith "data model" then { model with Output = ModelOutput.Data } else model
                  let before = live ()
                  Expect.throwsT<InvalidOperationException> (fun () -> run model) (sprintf "%s: the model's exception" name)
                  Expect.equal (live ()) before (sprintf "%s: live tensors after the exception" name)
          }

          test "a model returning the wrong shape gets a clear error" {
              use g = generator 1L
              let noise = Noise.fromGenerator g
              use xT = torch.zeros (2L, 2L)
              let bad = Model.noise (fun x _ -> torch.zeros (3L))
              Expect.throwsT<InvalidOperationException> (fun () -> Sampler.sample sde bad Sampling.pc noise xT |> ignore) "wrong shape"
          } ]
