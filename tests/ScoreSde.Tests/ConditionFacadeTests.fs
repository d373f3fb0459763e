/// The C# facade's conditions (`SamplerOptions.Condition`), guidance (`Guidance`) and DPM-Solver++
/// thresholding: the same numbers as the F# core, and errors naming the facade's options.
module ScoreSde.Tests.ConditionFacadeTests

open System
open Expecto
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Quality
open ScoreSde.Tests.Common

let private coreSde = ScoreSde.Sde.standardVp
let private gauss = PredictorTests.gauss
let private model = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel coreSde gauss)
let private problem = Mixture.unequal16

/// A mask knowing every other coordinate of a sample of the Gaussian's dimension.
let private maskFor (dim: int) =
    torch.tensor(Array.init dim (fun i -> if i % 2 = 0 then 1.0 else 0.0), dtype = torch.float64).reshape([| 1L; int64 dim |])

let private expectNamed (name: string) (f: unit -> unit) (what: string) =
    try
        f ()
        failtestf "%s: no exception" what
    with :? ArgumentException as e ->
        Expect.equal e.ParamName name what

[<Tests>]
let tests =
    testList
        "C# facade: conditions and guidance"
        [ test "every sampler takes options.Condition and returns the known values exactly, as the core does" {
              let dim = gauss.Dim
              use g0 = generator 51L
              use y = torch.randn ([| 6L; int64 dim |], dtype = torch.float64, generator = g0)
              use mask = maskFor dim
              let runs: (string * (torch.Generator -> SampleResult) * ScoreSde.Sampling) list =
                  [ "PC",
                    (fun g ->
                        Sampler.PredictorCorrector(
                            VpSde(),
                            model,
                            [| 6L; int64 dim |],
                            PcOptions(Steps = 30, Dtype = torch.float64, Condition = Condition.Inpaint(y, mask)),
                            g
                        )),
                    { ScoreSde.Sampling.pc with Schedule = ScoreSde.Schedule.uniform 30 1e-3 }
                    "DPM-Solver",
                    (fun g ->
                        Sampler.DpmSolver(
                            VpSde(),
                            model,
                            [| 6L; int64 dim |],
                            DpmSolverOptions(Steps = 12, Dtype = torch.float64, Condition = Condition.Inpaint(y, mask)),
                            g
                        )),
                    { ScoreSde.Sampling.dpmSolver with
                        Schedule = ScoreSde.Schedule.create ScoreSde.TimeGrid.LogSnr 12 1e-3 } ]
              for name, facade, _ in runs do
                  use g = generator 52L
                  let r = facade g
                  use x = r.Samples
                  let vx, vy = values x, values y
                  for i in 0 .. vx.Length - 1 do
                      if i % 2 = 0 then
                          close 1e-12 vx.[i] vy.[i] (sprintf "%s: known element %d" name i)
                  Expect.isTrue (allFinite x) name
          }

          test "the facade's condition is the core's: same samples from the same generator" {
              let dim = gauss.Dim
              use g0 = generator 53L
              use y = torch.randn ([| 1L; int64 dim |], dtype = torch.float64, generator = g0)
              use mask = maskFor dim
              use a = torch.randn ([| int64 dim; int64 dim |], dtype = torch.float64, generator = g0)
              let struct (basis, r) = torch.linalg.qr (a)
              use basis = basis
              use r = r
              let condition = Condition.Linear(basis, y, mask)
              use g1 = generator 54L
              let facade =
                  Sampler.DpmSolver(
                      VpSde(),
                      model,
                      [| 5L; int64 dim |],
                      DpmSolverOptions(Steps = 10, Dtype = torch.float64, Condition = condition),
                      g1
                  )
              use fx = facade.Samples
              use g2 = generator 54L
              let noise = ScoreSde.Noise.fromGenerator g2
              use xT = ScoreSde.Sampler.prior coreSde [| 5L; int64 dim |] torch.float64 torch.CPU noise
              let sampling =
                  { ScoreSde.Sampling.dpmSolver with
                      Schedule = ScoreSde.Schedule.create ScoreSde.TimeGrid.LogSnr 10 1e-3
                      Condition = Some(ScoreSde.Condition.linear basis y mask) }
              let core = ScoreSde.Sampler.sample coreSde (ScoreSde.Model.noise (gaussianNoiseModel coreSde gauss)) sampling noise xT
              use cx = core.Samples
              Expect.equal (values fx) (values cx) "identical samples"
              use coords = Condition.Coordinates(basis, fx)
              let vc, vy = values coords, values y
              for i in 0..2 .. dim - 1 do
                  close 1e-12 vc.[i] vy.[i] (sprintf "known coordinate %d in the basis" i)
          }

          test "bad conditions name the facade's options" {
              let dim = gauss.Dim
              use y = torch.zeros ([| 1L; int64 dim |], dtype = torch.float64)
              use wrong = torch.zeros ([| 3L; int64 dim |], dtype = torch.float64)
              use mask = maskFor dim
              use notOrthonormal = torch.ones ([| int64 dim; int64 dim |], dtype = torch.float64)
              let pc (c: Condition) () =
                  Sampler.PredictorCorrector(VpSde(), model, [| 2L; int64 dim |], PcOptions(Steps = 5, Condition = c)).Samples.Dispose()
              expectNamed "options.Condition.Values" (pc (Condition.Inpaint(wrong, mask))) "values of another batch size"
              expectNamed "options.Condition.Mask" (pc (Condition.Inpaint(y, wrong))) "a mask of another batch size"
              expectNamed "options.Condition.Basis" (pc (Condition.Linear(notOrthonormal, y, mask))) "a basis that is not orthonormal"
              let fresh = Condition(y, mask, Replacement = Replacement.Fresh)
              expectNamed
                  "options.Condition.Replacement"
                  (fun () -> Sampler.ProbabilityFlow(VpSde(), model, [| 2L; int64 dim |], OdeOptions(Condition = fresh)).Samples.Dispose())
                  "fresh draws with the adaptive ODE solver"
              Expect.throwsT<ArgumentNullException> (fun () -> Condition.Inpaint(null, mask) |> ignore) "null values"
          }

          test "Guidance.ClassifierFree and Guidance.Classifier are the core's transformations" {
              let f = Conditional.conditionalNoise coreSde problem
              let labels = torch.tensor ([| 3L; 0L; 4L |])
              use x = torch.randn ([| 3L; 16L |], dtype = torch.float64)
              use t = full [| 3L |] 0.3 torch.float64
              let cm: ScoreSde.ConditionalModel = { Forward = f; Output = ScoreSde.ModelOutput.Noise; NullLabel = 5L }
              for batched in [ true; false ] do
                  let facade = Guidance.ClassifierFree(Func<_, _, _, _>(fun a b c -> f a b c), 5L, labels, 2.5, batched)
                  let core =
                      ScoreSde.Guidance.classifierFreeWith
                          (if batched then ScoreSde.GuidanceEvaluation.Batched else ScoreSde.GuidanceEvaluation.Separate)
                          cm
                          labels
                          2.5
                  use a = facade.Invoke(x, t)
                  use b = core.Forward x t
                  Expect.equal (values a) (values b) (sprintf "classifier-free, batched %b" batched)
              let unconditional = Mixture.noiseModel coreSde problem
              let cls = Conditional.classifier coreSde problem
              let facade =
                  Guidance.Classifier(VpSde(), Func<_, _, _>(unconditional), ModelPrediction.Noise, Func<_, _, _>(cls), labels, 1.0)
              use a = facade.Invoke(x, t)
              use b = f x t labels
              Expect.isLessThan (values (a - b) |> Array.map abs |> Array.max) 1e-9 "exact classifier guidance gives the class's model"
              expectNamed
                  "scale"
                  (fun () -> Guidance.ClassifierFree(Func<_, _, _, _>(fun a b c -> f a b c), 5L, labels, -1.0) |> ignore)
                  "negative scale"
              expectNamed
                  "labels"
                  (fun () ->
                      Guidance.ClassifierFree(Func<_, _, _, _>(fun a b c -> f a b c), 5L, torch.tensor ([| 1.0 |]), 1.0)
                      |> ignore)
                  "float labels"
          }

          test "DPM-Solver++ thresholding options reach the core; bad ones are named" {
              let dim = gauss.Dim
              for th, core in
                  [ Thresholding.Static, ScoreSde.Thresholding.Static 0.5
                    Thresholding.Dynamic, ScoreSde.Thresholding.Dynamic(0.9, 0.5) ] do
                  use g1 = generator 55L
                  let options =
                      DpmSolverOptions(
                          Steps = 10,
                          Dtype = torch.float64,
                          Algorithm = DpmSolverAlgorithm.DpmSolverPlusPlus,
                          Thresholding = th,
                          ThresholdQuantile = 0.9,
                          ThresholdMax = 0.5
                      )
                  let facade = Sampler.DpmSolver(VpSde(), model, [| 4L; int64 dim |], options, g1)
                  use fx = facade.Samples
                  use g2 = generator 55L
                  let noise = ScoreSde.Noise.fromGenerator g2
                  use xT = ScoreSde.Sampler.prior coreSde [| 4L; int64 dim |] torch.float64 torch.CPU noise
                  let settings =
                      { ScoreSde.DpmSolver.defaults with
                          Algorithm = ScoreSde.DpmAlgorithm.DpmSolverPlusPlus
                          Thresholding = core }
                  let sampling =
                      { ScoreSde.Sampling.dpmSolver with
                          Method = ScoreSde.Method.DpmSolver settings
                          Schedule = ScoreSde.Schedule.create ScoreSde.TimeGrid.LogSnr 10 1e-3 }
                  let r = ScoreSde.Sampler.sample coreSde (ScoreSde.Model.noise (gaussianNoiseModel coreSde gauss)) sampling noise xT
                  use cx = r.Samples
                  Expect.equal (values fx) (values cx) (sprintf "%A: the core's samples" th)
                  // the threshold changes the result (the Gaussian's data reach beyond 0.5)
                  use g3 = generator 55L
                  let plain =
                      Sampler.DpmSolver(
                          VpSde(),
                          model,
                          [| 4L; int64 dim |],
                          DpmSolverOptions(Steps = 10, Dtype = torch.float64, Algorithm = DpmSolverAlgorithm.DpmSolverPlusPlus),
                          g3
                      )
                  use px = plain.Samples
                  Expect.notEqual (values px) (values fx) (sprintf "%A: thresholding changes the samples" th)
              let run (o: DpmSolverOptions) () = Sampler.DpmSolver(VpSde(), model, [| 2L; int64 dim |], o).Samples.Dispose()
              expectNamed
                  "options.Thresholding"
                  (run (DpmSolverOptions(Algorithm = DpmSolverAlgorithm.DpmSolver, Thresholding = Thresholding.Dynamic)))
                  "thresholding with noise-prediction DPM-Solver"
              expectNamed
                  "options.ThresholdQuantile"
                  (run (
                      DpmSolverOptions(
                          Algorithm = DpmSolverAlgorithm.DpmSolverPlusPlus,
                          Thresholding = Thresholding.Dynamic,
                          ThresholdQuantile = 1.5
                      )
                  ))
                  "a quantile above 1"
              expectNamed
                  "options.ThresholdMax"
                  (run (
                      DpmSolverOptions(
                          Algorithm = DpmSolverAlgorithm.DpmSolverPlusPlus,
                          Thresholding = Thresholding.Static,
                          ThresholdMax = -1.0
                      )
                  ))
                  "a negative bound"
          } ]
