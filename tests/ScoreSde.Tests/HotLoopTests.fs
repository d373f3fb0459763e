/// The samplers' hot loops: the in-place steps against fresh-tensor versions, and the tensors each loop
/// creates per step (none beyond the model's).
module ScoreSde.Tests.HotLoopTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.FastPathTests

[<Tests>]
let tests =
    testList
        "Hot loops"
        [ test "the in-place predictor step equals the fresh step (same draws), fused or not" {
              // The samplers' in-place step (one fused pass after the draw on contiguous CPU tensors) and
              // the manual step on fresh tensors, from the same generator state; a non-contiguous state
              // takes the tensor-operation path and must give the same numbers too.
              for dtype in dtypes do
                  for p in [ Predictor.EulerMaruyama; Predictor.ReverseDiffusion; Predictor.AncestralSampling ] do
                      for contiguous in [ true; false ] do
                          use g0 = generator 14L
                          use x0 = torch.randn ([| 4L; 3L; 5L; 5L |], dtype = dtype, generator = g0)
                          let model = Model.noise (fun x _ -> x * 0.6 - 0.1)
                          use outRef = x0 * 0.6 - 0.1
                          use g1 = generator 15L
                          let r = Predictor.stepWithOutput sde p ModelOutput.Noise outRef x0 [| 0.6 |] [| 0.58 |] (Noise.fromGenerator g1)
                          use expected = r.Sample
                          use _mean = r.Mean
                          // a state that is not contiguous: the transpose of a transposed copy
                          use storage = if contiguous then x0.clone () else x0.transpose(1L, 3L).contiguous()
                          use x = if contiguous then storage.alias () else storage.transpose (1L, 3L)
                          Expect.equal (x.is_contiguous ()) contiguous "layout under test"
                          use z = torch.empty_like (x0)
                          use tb = full [| 4L |] 0.6 dtype
                          use g2 = generator 15L
                          let nfe = Predictor.stepInPlace sde p model x tb z (Noise.fromGenerator g2) 0.6 0.58 true
                          Expect.equal nfe 1 "one evaluation"
                          let ve, va = values expected, values x
                          let tol = if dtype = torch.float32 then 1e-5 else 1e-12
                          closeElements tol va ve (fun i ->
                              sprintf "%A %s contiguous=%b element %d (seeds 14, 15)" dtype (Predictor.name p) contiguous i)
          }

          test "StepPred with a shared t creates exactly its two result tensors per call" {
              let s = ScoreSde.CSharp.ScoreSdeVpScheduler()
              s.SetTimesteps(1000)
              use g = generator 1L
              use x = torch.randn ([| 4L; 3L; 8L; 8L |], generator = g)
              use out = torch.randn ([| 4L; 3L; 8L; 8L |], generator = g)
              use t0 = torch.tensor (0.5f)
              use tb = full [| 4L |] 0.5 torch.float32
              for name, t in [ "0-d t", t0; "shared [B] t", tb ] do
                  let before = created ()
                  for _ in 1..50 do
                      let r = s.StepPred(out, x, t, g)
                      r.PrevSample.Dispose()
                      r.PrevSampleMean.Dispose()
                  Expect.equal (created () - before) 100L (sprintf "%s: tensors created by 50 calls" name)
          }

          test "sampler hot loops create no tensor per step beyond the model's (Langevin's norms included, on CPU)" {
              // Count tensors over a 40-step and a 120-step run: the difference over 80 steps is the per-step
              // count, free of the run's fixed set-up (state, noise and time buffers). The model creates one
              // tensor per call.
              let cases =
                  [ "EM, no corrector", Predictor.EulerMaruyama, Corrector.NoCorrector, ModelOutput.Noise, 1.0
                    "RD + annealed Langevin", Predictor.ReverseDiffusion, Corrector.annealedLangevin 0.16 1, ModelOutput.Noise, 2.0
                    "AS + Langevin (per-sample norms)", Predictor.AncestralSampling, Corrector.langevin 0.16 1, ModelOutput.Score, 2.0
                    "EM + Langevin (batch-mean norms)",
                    Predictor.EulerMaruyama,
                    Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean },
                    ModelOutput.Noise,
                    2.0
                    "EM + Langevin, data model (scratch buffer)", Predictor.EulerMaruyama, Corrector.langevin 0.16 1, ModelOutput.Data, 2.0 ]
              for name, p, c, output, perStep in cases do
                  let count steps =
                      use g = generator 9L
                      let noise = Noise.fromGenerator g
                      use xT = torch.randn ([| 4L; 3L; 8L; 8L |], generator = g)
                      let model = { Forward = (fun (x: Tensor) _ -> x * 0.5); Output = output }
                      let sampling = pcRun p c steps
                      let before = created ()
                      let r = Sampler.sample sde model sampling noise xT
                      let n = created () - before
                      r.Samples.Dispose()
                      n
                  let a, b = count 40, count 120
                  Expect.equal (float (b - a) / 80.0) perStep (sprintf "%s: tensors created per step" name)
          }

          test "the in-place fixed-step probability flow equals the generic solver on fresh tensors" {
              let g64 = { Mu = [| 0.5; -1.0; 2.0 |]; S = [| 0.3; 1.0; 0.7 |] }
              let models =
                  [ "noise", Model.noise (gaussianNoiseModel sde g64)
                    "score", Model.score (gaussianScoreModel sde g64)
                    "data",
                    { Forward = (fun x t -> use s = gaussianScoreModel sde g64 x t in x * 0.5 + s * 0.1)
                      Output = ModelOutput.Data }
                    "returns its input", Model.score (fun x _ -> x) ]
              for dtype in dtypes do
                  for solver in [ OdeSolver.Euler; OdeSolver.Heun; OdeSolver.Rk4 ] do
                      for name, model in models do
                          use g = generator 12L
                          use xT = torch.randn ([| 6L; 3L |], dtype = dtype, generator = g)
                          let fast = Sampler.sample sde model (fixedFlow solver TimeGrid.Uniform 12 1e-3) (unusedNoise ()) xT
                          use fx = fast.Samples
                          let ts = TimeGrid.points sde TimeGrid.Uniform 12 1e-3
                          let slow, nfe = OdeSolver.integrate solver (ProbabilityFlow.sharedField sde model) xT ts
                          use slow = slow
                          Expect.equal fast.Nfe nfe "evaluations"
                          // encoding runs the same integrator upwards
                          let enc = Sampler.encode sde model (OdeMethod.FixedStep solver) (Schedule.uniform 12 1e-3) xT
                          use ez = enc.Latent
                          let slowEnc, _ = OdeSolver.integrate solver (ProbabilityFlow.sharedField sde model) xT (Array.rev ts)
                          use slowEnc = slowEnc
                          let tol = if dtype = torch.float32 then 2e-5 else 1e-11
                          for a, b, what in [ fx, slow, "sample"; ez, slowEnc, "encode" ] do
                              let va, vb = values a, values b
                              closeElements tol va vb (fun i ->
                                  sprintf "%A %s %s model %s element %d (seed 12)" dtype (OdeSolver.name solver) name what i)
          }

          test "the multistep DPM-Solver loop creates no tensor per step beyond the model's" {
              // Predictions go into a ring of preallocated buffers; count over 10 and 30 steps.
              for algorithm in [ DpmAlgorithm.DpmSolver; DpmAlgorithm.DpmSolverPlusPlus ] do
                  for order in [ 1; 2; 3 ] do
                      let count steps =
                          use g = generator 16L
                          use xT = torch.randn ([| 4L; 3L; 8L; 8L |], generator = g)
                          let model = Model.noise (fun x _ -> x * 0.5)
                          let sampling =
                              { Sampling.dpmSolver with
                                  Method = Method.DpmSolver { DpmSolver.defaults with Algorithm = algorithm; Order = order }
                                  Schedule = Schedule.uniform steps 1e-3 }
                          let before = created ()
                          let r = Sampler.sample sde model sampling (unusedNoise ()) xT
                          let n = created () - before
                          r.Samples.Dispose()
                          n
                      let a, b = count 10, count 30
                      Expect.equal
                          (float (b - a) / 20.0)
                          1.0
                          (sprintf "%A order %d: tensors created per step = the model's one" algorithm order)
          }

          test "the in-place probability-flow field equals the drift f - 1/2 g^2 s written out in float64" {
              let shape = [| 4L; 3L; 5L |]
              let ts = [| 0.9; 0.5; 0.2; 0.01 |]
              for dtype in dtypes do
                  for output in [ ModelOutput.Noise; ModelOutput.Score; ModelOutput.Data ] do
                      let model = { Forward = (fun (x: Tensor) _ -> x * 0.7 - 0.2); Output = output }
                      use g = generator 18L
                      use x = torch.randn (shape, dtype = dtype, generator = g)
                      use t = torch.tensor (ts, dtype = dtype)
                      use k = torch.empty_like (x)
                      ProbabilityFlow.fieldInto sde model x t k
                      let xs, tv, ks = values x, values t, values k
                      let per = xs.Length / 4
                      for i in 0 .. xs.Length - 1 do
                          let ti = tv.[i / per]
                          let o = 0.7 * xs.[i] - 0.2
                          let score =
                              match output with
                              | ModelOutput.Noise -> -o / sigmaOf ti
                              | ModelOutput.Score -> o
                              | ModelOutput.Data -> (alphaOf ti * o - xs.[i]) / (sigmaOf ti ** 2.0)
                          let expected = -0.5 * betaOf ti * xs.[i] - 0.5 * betaOf ti * score
                          // float32 at t = 0.01: the data model's 1/sigma^2 (~50) amplifies the rounding
                          let tol =
                              if dtype = torch.float32 then
                                  1e-5 * (1.0 + abs expected) * (1.0 / (sigmaOf ti ** 2.0))
                              else
                                  1e-11 * (1.0 + abs expected) / (sigmaOf ti ** 2.0)
                          close tol ks.[i] expected (sprintf "%A %A t = %g element %d (seed 18)" dtype output ti i)
                      Expect.isTrue (values x = xs) "x unchanged"
          }

          test "the adaptive Dormand-Prince step creates no state-sized tensor (only [B]-sized step control)" {
              // The observer runs inside the step's dispose scope, after the step: every tensor the step
              // created and still holds is in that scope. The field's own tensors are disposed by the
              // solver's evaluation scope before. State [8, 3, 16, 16]: state-sized means 6,144 elements.
              let shape = [| 8L; 3L; 16L; 16L |]
              let stateSize = Array.fold (*) 1L shape
              for control in [ StepControl.PerSample; StepControl.BatchGlobal ] do
                  for dtype in dtypes do
                      let big = ResizeArray<int * int>()
                      let mutable observed = 0
                      let observer (step: int) (_: float) (_: Tensor) =
                          observed <- observed + 1
                          let n =
                              torch.CurrentDisposeScope.DisposablesView
                              |> Seq.sumBy (function
                                  | :? Tensor as t when not t.IsInvalid && t.numel () >= stateSize -> 1
                                  | _ -> 0)
                          if n > 0 then
                              big.Add((step, n))
                      let settings = { AdaptiveOde.defaults with Rtol = 1e-5; Atol = 1e-5; Control = control; Observer = Some observer }
                      use g = generator 17L
                      use x0 = torch.randn (shape, dtype = dtype, generator = g)
                      // a field that differs per sample, so samples take different steps (and some reject)
                      use rates = torch.linspace(0.5, 4.0, 8L, dtype = dtype).reshape([| 8L; 1L; 1L; 1L |])
                      let field (x: Tensor) (t: Tensor) = x * rates * torch.cos(t * 3.0).reshape([| 8L; 1L; 1L; 1L |])
                      let r = AdaptiveOde.integrate settings field x0 0.0 2.0
                      use _state = r.State
                      Expect.isGreaterThan observed 5 "steps observed"
                      Expect.isEmpty big (sprintf "%A %A: (step, state-sized tensors held) %A" control dtype (List.ofSeq big))
          }

          test "the fixed-step probability-flow loop creates no tensor per step beyond the model's" {
              for solver in [ OdeSolver.Euler; OdeSolver.Heun; OdeSolver.Rk4 ] do
                  let count steps =
                      use g = generator 10L
                      use xT = torch.randn ([| 4L; 3L; 8L; 8L |], generator = g)
                      let model = Model.noise (fun x _ -> x * 0.5)
                      let before = created ()
                      let r = Sampler.sample sde model (fixedFlow solver TimeGrid.Uniform steps 1e-3) (unusedNoise ()) xT
                      let n = created () - before
                      r.Samples.Dispose()
                      n
                  let a, b = count 10, count 30
                  Expect.equal
                      (float (b - a) / 20.0)
                      (float (OdeSolver.evaluationsPerStep solver))
                      (sprintf "%s: tensors created per step = model evaluations per step" (OdeSolver.name solver))
          } ]
