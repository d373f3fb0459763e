/// Conditions (known values in an orthonormal basis, `Sampling.Condition`): validation, what every method
/// does to the known part, the caller's tensors, memory, and the PC inpainter against the exact
/// conditional of a Gaussian mixture (tests/ScoreSde.Quality/Conditional.fs, computed without the library).
module ScoreSde.Tests.ConditionTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Quality
open ScoreSde.Tests.Common
open ScoreSde.Tests.FastPathTests

let private sde = Sde.standardVp

/// One sampler per method family (few steps: these tests check mechanics, not accuracy).
let private methods =
    [ "PC", pcRun Predictor.ReverseDiffusion (Corrector.langevin 0.16 1) 20
      "PC, no corrector", pcRun Predictor.EulerMaruyama Corrector.NoCorrector 20
      "ODE RK4", fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 8 1e-3
      "ODE Dopri5", { Sampling.flow with Method = Method.ProbabilityFlow(OdeMethod.dopri5 1e-4 1e-4) }
      "DPM-Solver-3M", { Sampling.dpmSolver with Schedule = Schedule.create TimeGrid.LogSnr 10 1e-3 }
      "DPM-Solver-2S",
      { Sampling.dpmSolver with
          Method = Method.DpmSolver { DpmSolver.defaults with Method = DpmMethod.SingleStep; Order = 2 }
          Schedule = Schedule.create TimeGrid.LogSnr 10 1e-3 }
      "adaptive DPM-Solver",
      { Sampling.dpmSolver with
          Method = Method.DpmSolver { DpmSolver.defaults with Method = DpmMethod.Adaptive DpmSolver.adaptiveDefaults; Order = 2 } } ]

let private isAdaptive (name: string) = name.Contains "Dopri5" || name.Contains "adaptive"

/// A diagonal Gaussian as the data (its coordinates independent) and its exact noise prediction.
let private g4 = { Mu = [| 0.5; -1.0; 2.0; 0.3 |]; S = [| 0.3; 1.0; 0.7; 0.5 |] }

let private mask4 () = torch.tensor([| 1.0; 0.0; 1.0; 0.0 |], dtype = torch.float64).reshape([| 1L; 4L |])

/// A 4 x 4 orthonormal matrix (a rotation in the (0, 1) plane and one in the (2, 3) plane, mixed by a
/// permutation), in float64.
let private basis4 () =
    let c1, s1, c2, s2 = Math.Cos 0.4, Math.Sin 0.4, Math.Cos 1.1, Math.Sin 1.1
    torch
        .tensor([| c1; -s1; 0.0; 0.0; 0.0; 0.0; c2; -s2; s1; c1; 0.0; 0.0; 0.0; 0.0; s2; c2 |], dtype = torch.float64)
        .reshape([| 4L; 4L |])

/// Expect an ArgumentException whose ParamName is `param`.
let private expectParam (param: string) (f: unit -> unit) (what: string) =
    try
        f ()
        failtestf "%s: no exception" what
    with :? ArgumentException as e ->
        Expect.equal e.ParamName param (sprintf "%s: the parameter named (%s)" what e.Message)

[<Tests>]
let tests =
    testList
        "Conditions"
        [ test "bad conditions are refused before any work, naming the setting" {
              use xT = torch.zeros ([| 3L; 4L |], dtype = torch.float64)
              use y = torch.zeros ([| 3L; 4L |], dtype = torch.float64)
              use m = mask4 ()
              let model = Model.noise (gaussianNoiseModel sde g4)
              let run sampling c () =
                  let r = Sampler.sample sde model { sampling with Condition = Some c } (unusedNoise ()) xT
                  r.Samples.Dispose()
              use wrongValues = torch.zeros ([| 2L; 4L |], dtype = torch.float64)
              use wrongMask = torch.zeros ([| 5L |], dtype = torch.float64)
              use intValues = torch.zeros ([| 3L; 4L |], dtype = torch.int64)
              use notOrthonormal = torch.ones ([| 4L; 4L |], dtype = torch.float64)
              use notSquare = torch.eye (4L, 3L, dtype = torch.float64)
              use wrongSize = torch.eye (3L, dtype = torch.float64)
              let pc = pcRun Predictor.ReverseDiffusion Corrector.NoCorrector 5
              expectParam "values" (run pc (Condition.inpaint wrongValues m)) "values of another batch size"
              expectParam "mask" (run pc (Condition.inpaint y wrongMask)) "a mask that does not broadcast"
              expectParam "values" (run pc (Condition.inpaint intValues m)) "integer values"
              expectParam "basis" (run pc (Condition.linear notOrthonormal y m)) "a basis that is not orthonormal"
              expectParam "basis" (run pc (Condition.linear notSquare y m)) "a basis that is not square"
              expectParam "basis" (run pc (Condition.linear wrongSize y m)) "a basis of the wrong size"
              for name, sampling in methods do
                  if isAdaptive name then
                      expectParam
                          "replacement"
                          (run sampling (Condition.inpaint y m |> Condition.withReplacement Replacement.Fresh))
                          (sprintf "%s with fresh draws" name)
          }

          test "every method ends with the known part exactly the known values, identity basis or not, in float32 and float64" {
              for dtype in dtypes do
                  for name, sampling in methods do
                      for basis in [ None; Some(basis4 ()) ] do
                          use g = generator 31L
                          use xT = torch.randn ([| 5L; 4L |], dtype = dtype, generator = g)
                          use y = torch.randn ([| 5L; 4L |], dtype = torch.float64, generator = g)
                          use m = mask4 ()
                          let c = { Values = y; Mask = m; Basis = basis; Replacement = None }
                          let r =
                              Sampler.sample
                                  sde
                                  (Model.noise (gaussianNoiseModel sde g4))
                                  { sampling with Condition = Some c }
                                  (Noise.fromGenerator g)
                                  xT
                          use x = r.Samples
                          Expect.equal x.dtype dtype "the state's dtype"
                          use u = Condition.coordinates basis (x.to_type torch.float64)
                          let vu, vy = values u, values y
                          let tol = if dtype = torch.float32 then 1e-5 else 1e-12
                          for i in 0 .. vu.Length - 1 do
                              if i % 4 = 0 || i % 4 = 2 then
                                  close
                                      (tol * (1.0 + abs vy.[i]))
                                      vu.[i]
                                      vy.[i]
                                      (sprintf "%s %A basis %b element %d" name dtype basis.IsSome i)
                          Expect.isTrue (allFinite x) (sprintf "%s: finite" name)
                          basis |> Option.iter (fun b -> b.Dispose())
          }

          test "the caller's latent, values, mask and basis are left as they were" {
              for name, sampling in methods do
                  use g = generator 32L
                  use xT = torch.randn ([| 4L; 4L |], dtype = torch.float32, generator = g)
                  use y = torch.randn ([| 1L; 4L |], dtype = torch.float32, generator = g)
                  use m = mask4 ()
                  use b = basis4 ()
                  let before = [ values xT; values y; values m; values b ]
                  let r =
                      Sampler.sample
                          sde
                          (Model.noise (gaussianNoiseModel sde g4))
                          { sampling with Condition = Some(Condition.linear b y m) }
                          (Noise.fromGenerator g)
                          xT
                  r.Samples.Dispose()
                  Expect.equal [ values xT; values y; values m; values b ] before (sprintf "%s: caller's tensors" name)
          }

          test "the steps see the known part on its path: a fixed latent's z is the same at every step, fresh draws are new N(0, 1)" {
              // With the observer called after each step's replacement, (x_known - alpha_t y) / sigma_t is
              // the latent of the known part: constant with FixedLatent, a new standard normal draw with Fresh.
              let n = 400L
              for name, sampling in methods do
                  if not (isAdaptive name) then
                      for replacement in [ Replacement.Fresh; Replacement.FixedLatent ] do
                          let latents = Collections.Generic.List<float[]>()
                          use g = generator 33L
                          use xT = torch.randn ([| n; 4L |], dtype = torch.float64, generator = g)
                          use y = torch.randn ([| n; 4L |], dtype = torch.float64, generator = g)
                          use m = mask4 ()
                          let observe _ (t: float) (x: Tensor) =
                              let a, s = marginalCoefficients sde t
                              let vx, vy = values x, values y
                              latents.Add
                                  [| for i in 0 .. vx.Length - 1 do
                                         if i % 4 = 0 then
                                             yield (vx.[i] - a * vy.[i]) / s |]
                          let c = Condition.inpaint y m |> Condition.withReplacement replacement
                          let r =
                              Sampler.sample
                                  sde
                                  (Model.noise (gaussianNoiseModel sde g4))
                                  { sampling with Condition = Some c; Observer = Some observe }
                                  (Noise.fromGenerator g)
                                  xT
                          r.Samples.Dispose()
                          // the last step may be the finish's mean; compare the steps before it
                          let steps = latents |> Seq.take (latents.Count - 1) |> Array.ofSeq
                          Expect.isGreaterThan steps.Length 2 "steps observed"
                          match replacement with
                          | Replacement.FixedLatent ->
                              for s in steps do
                                  for i in 0 .. s.Length - 1 do
                                      close 1e-7 s.[i] steps.[0].[i] (sprintf "%s: the fixed latent, sample %d" name i)
                          | Replacement.Fresh ->
                              for k in 1 .. steps.Length - 1 do
                                  let d = Array.map2 (-) steps.[k] steps.[k - 1]
                                  Expect.isGreaterThan (Array.averageBy abs d) 0.5 (sprintf "%s: step %d draws anew" name k)
                              let all = Array.concat steps
                              let mean = Array.average all
                              let sd = Math.Sqrt(Array.averageBy (fun v -> (v - mean) ** 2.0) all)
                              // n (steps) draws: the mean's standard error is below 0.02
                              close 0.08 mean 0.0 (sprintf "%s: mean of the fresh latents" name)
                              close 0.08 sd 1.0 (sprintf "%s: sd of the fresh latents" name)
          }

          test
              "independent coordinates: with a fixed latent the deterministic methods leave the unknown part as the unconditional run has it" {
              // The data's coordinates are independent (a diagonal Gaussian), so the model's output on the
              // unknown coordinates does not depend on the known ones: the conditional run's unknown part
              // is the unconditional run's (same latent), to rounding for the fixed-step methods and to
              // the tolerance for the adaptive ones (their step sizes see the known part too).
              for name, sampling in methods do
                  if not (name.StartsWith "PC") then
                      use g = generator 34L
                      use xT = torch.randn ([| 6L; 4L |], dtype = torch.float64, generator = g)
                      use y = torch.randn ([| 6L; 4L |], dtype = torch.float64, generator = g)
                      use m = mask4 ()
                      let model = Model.noise (gaussianNoiseModel sde g4)
                      // the adaptive methods at tolerances 1e-4 (their step sizes see the known part too)
                      let sampling =
                          match sampling.Method with
                          | Method.DpmSolver({ Method = DpmMethod.Adaptive a } as d) ->
                              { sampling with
                                  Method = Method.DpmSolver { d with Method = DpmMethod.Adaptive { a with Rtol = 1e-4; Atol = 1e-4 } } }
                          | _ -> sampling
                      let plain = Sampler.sample sde model sampling (unusedNoise ()) xT
                      use px = plain.Samples
                      let c = Condition.inpaint y m |> Condition.withReplacement Replacement.FixedLatent
                      let conditioned = Sampler.sample sde model { sampling with Condition = Some c } (Noise.fromSeed 5L torch.CPU) xT
                      use cx = conditioned.Samples
                      let vp, vc = values px, values cx
                      let tol = if isAdaptive name then 1e-2 else 1e-10
                      for i in 0 .. vp.Length - 1 do
                          if i % 4 = 1 || i % 4 = 3 then
                              close tol vc.[i] vp.[i] (sprintf "%s: unknown element %d" name i)
          }

          test "a condition adds no tensor per step with fresh draws and one per model call with a fixed latent (identity basis)" {
              // Counted over a 40-step and a 120-step PC run (RD + annealed Langevin: two model calls per step).
              for replacement, perStep in [ Replacement.Fresh, 2.0; Replacement.FixedLatent, 4.0 ] do
                  let count steps =
                      use g = generator 35L
                      use xT = torch.randn ([| 4L; 3L; 8L; 8L |], generator = g)
                      use y = torch.randn ([| 1L; 3L; 8L; 8L |], generator = g)
                      use ones = torch.ones ([| 1L; 1L; 8L; 8L |])
                      use m = ones.tril ()
                      let model = Model.noise (fun x _ -> x * 0.5)
                      let sampling =
                          { pcRun Predictor.ReverseDiffusion (Corrector.annealedLangevin 0.16 1) steps with
                              Condition = Some(Condition.inpaint y m |> Condition.withReplacement replacement) }
                      let before = created ()
                      let r = Sampler.sample sde model sampling (Noise.fromGenerator g) xT
                      let n = created () - before
                      r.Samples.Dispose()
                      n
                  let a, b = count 40, count 120
                  Expect.equal (float (b - a) / 80.0) perStep (sprintf "%A: tensors created per step (the model's 2 included)" replacement)
          }

          test "nothing is left alive after a run, or when the model throws mid-run" {
              let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
              for name, sampling in methods do
                  for basis in [ None; Some(basis4 ()) ] do
                      use g = generator 36L
                      use xT = torch.randn ([| 4L; 4L |], dtype = torch.float64, generator = g)
                      use y = torch.randn ([| 4L; 4L |], dtype = torch.float64, generator = g)
                      use m = mask4 ()
                      let c = Some { Values = y; Mask = m; Basis = basis; Replacement = None }
                      let exact = gaussianNoiseModel sde g4
                      let once () =
                          let r = Sampler.sample sde (Model.noise exact) { sampling with Condition = c } (Noise.fromGenerator g) xT
                          r.Samples.Dispose()
                      // a first run may create what TorchSharp keeps for the thread; count over a second one
                      once ()
                      let baseline = live ()
                      once ()
                      Expect.equal (live ()) baseline (sprintf "%s: live tensors after a run" name)
                      let calls = ref 0
                      let failing =
                          Model.noise (fun x t ->
                              calls.Value <- calls.Value + 1
                              if calls.Value = 4 then
                                  raise (InvalidOperationException "model failure")
                              exact x t)
                      Expect.throwsT<InvalidOperationException>
                          (fun () -> Sampler.sample sde failing { sampling with Condition = c } (Noise.fromGenerator g) xT |> ignore)
                          (sprintf "%s: the model's exception" name)
                      Expect.equal (live ()) baseline (sprintf "%s: live tensors after the model threw" name)
                      basis |> Option.iter (fun b -> b.Dispose())
          } ]
