/// Guidance as model transformations: classifier guidance against the exact class-conditional score of a
/// Gaussian mixture (for every SDE and output kind), classifier-free guidance against its formula, the
/// gradient only around the classifier's call, and bad input.
module ScoreSde.Tests.GuidanceTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Quality
open ScoreSde.Tests.Common

let private problem = Mixture.unequal16

/// A noise prediction as the model output of another kind at time t (host coefficients written here:
/// score = -eps / sigma; data = (x - sigma eps) / alpha).
let private asOutput (sde: Sde) (output: ModelOutput) (eps: Tensor -> Tensor -> Tensor) : Model =
    let forward (x: Tensor) (t: Tensor) =
        let tv = (values t).[0]
        let a, s = marginalCoefficients sde tv
        use e = eps x t
        match output with
        | ModelOutput.Noise -> e.clone ()
        | ModelOutput.Score -> e * (-1.0 / s)
        | ModelOutput.Data -> (x - e * s) / a
    { Forward = forward; Output = output }

let private points (n: int64) (seed: int64) =
    use g = generator seed
    torch.randn ([| n; 16L |], dtype = torch.float64, generator = g)

let private maxAbsDiff (a: Tensor) (b: Tensor) = (values (a - b) |> Array.map abs |> Array.max)

[<Tests>]
let tests =
    testList
        "Guidance"
        [ test
              "classifier guidance at scale 1 with the exact classifier gives each class's exact model output (every SDE, output kind, time)" {
              // score + grad log p(k | x_t) = grad log p_t(x | k): the guided model must equal component k's
              // model output (Conditional.conditionalNoise), converted to the model's output kind.
              let labels = torch.tensor ([| 0L; 1L; 2L; 3L; 4L; 3L |])
              use x = points 6L 41L
              for sdeName, sde in allSdes do
                  let mixture = Mixture.noiseModel sde problem
                  let conditional = Conditional.conditionalNoise sde problem
                  for output in [ ModelOutput.Noise; ModelOutput.Score; ModelOutput.Data ] do
                      let guided = Guidance.classifier sde (asOutput sde output mixture) (Conditional.classifier sde problem) labels 1.0
                      let expected = asOutput sde output (fun x t -> conditional x t labels)
                      for t in [ 0.02; 0.3; 0.9 ] do
                          use tb = full [| 6L |] t torch.float64
                          use xs = x * (Sde.priorStd sde * 0.3 + 0.5)
                          use got = guided.Forward xs tb
                          use want = expected.Forward xs tb
                          let scale = values want |> Array.map abs |> Array.max
                          Expect.isLessThan (maxAbsDiff got want) (1e-9 * (1.0 + scale)) (sprintf "%s %A t = %g" sdeName output t)
          }

          test "classifier guidance adds scale times the gradient in the output's units; scale 0 is the model" {
              let sde = Sde.standardVp
              let labels = torch.tensor ([| 2L |])
              use x = points 5L 42L
              use tb = full [| 5L |] 0.4 torch.float64
              let model = Model.noise (Mixture.noiseModel sde problem)
              let cls = Conditional.classifier sde problem
              use plain = model.Forward x tb
              use g0 = (Guidance.classifier sde model cls labels 0.0).Forward x tb
              Expect.equal (maxAbsDiff g0 plain) 0.0 "scale 0"
              use g1 = (Guidance.classifier sde model cls labels 1.0).Forward x tb
              use g3 = (Guidance.classifier sde model cls labels 3.0).Forward x tb
              // linear in the scale: g3 - plain = 3 (g1 - plain)
              use d1 = g1 - plain
              use d3 = g3 - plain
              Expect.isLessThan (maxAbsDiff d3 (d1 * 3.0)) 1e-10 "linear in the scale"
              Expect.isGreaterThan (values d1 |> Array.map abs |> Array.max) 1e-3 "the guidance changes the output"
          }

          test "the classifier's gradient is taken with gradients enabled around its call only" {
              // A trainable linear classifier: after a guided run its parameters hold no gradient, gradient
              // mode is as it was, and the result does not require gradients.
              let sde = Sde.standardVp
              use lin = torch.nn.Linear(16L, 5L, dtype = torch.float64)
              let cls: Tensor -> Tensor -> Tensor = fun x _ -> lin.forward x
              let model = Guidance.classifier sde (Model.noise (Mixture.noiseModel sde problem)) cls (torch.tensor ([| 1L |])) 2.0
              use xT = points 8L 43L
              let wasEnabled = torch.is_grad_enabled ()
              let r =
                  Sampler.sample sde model { Sampling.dpmSolver with Schedule = Schedule.create TimeGrid.LogSnr 8 1e-3 } (unusedNoise ()) xT
              use x = r.Samples
              Expect.equal (torch.is_grad_enabled ()) wasEnabled "gradient mode unchanged"
              Expect.isFalse x.requires_grad "the samples do not require gradients"
              for p in lin.parameters () do
                  Expect.isTrue (isNull p.grad) "no gradient accumulated in the classifier's parameters"
              Expect.isTrue (allFinite x) "finite"
          }

          test "classifier-free guidance is (1 + w) conditional - w unconditional, batched or not, per-sample labels" {
              for sdeName, sde in allSdes do
                  let f = Conditional.conditionalNoise sde problem
                  let cm = { Forward = f; Output = ModelOutput.Noise; NullLabel = 5L }
                  let labels = torch.tensor ([| 4L; 0L; 2L; 1L |])
                  use x = points 4L 44L
                  use tb = full [| 4L |] 0.35 torch.float64
                  use c = f x tb labels
                  use u = f x tb (torch.tensor ([| 5L |]))
                  for w in [ 0.5; 3.0 ] do
                      use want = c * (1.0 + w) - u * w
                      use batched = (Guidance.classifierFree cm labels w).Forward x tb
                      use separate = (Guidance.classifierFreeWith GuidanceEvaluation.Separate cm labels w).Forward x tb
                      Expect.isLessThan (maxAbsDiff batched want) 1e-12 (sprintf "%s w = %g batched" sdeName w)
                      Expect.isLessThan (maxAbsDiff separate want) 1e-12 (sprintf "%s w = %g separate" sdeName w)
          }

          test "classifier-free guidance calls the model once on 2B (batched), twice on B (separate), once at w = 0" {
              let calls = Collections.Generic.List<int64 * int64[]>()
              let f (x: Tensor) (_: Tensor) (l: Tensor) =
                  calls.Add((x.shape.[0], values l |> Array.map int64))
                  x * 0.5
              let cm = { Forward = f; Output = ModelOutput.Noise; NullLabel = 9L }
              use x = points 3L 45L
              use tb = full [| 3L |] 0.5 torch.float64
              let labels = torch.tensor ([| 7L |])
              let call (m: Model) =
                  calls.Clear()
                  use out = m.Forward x tb
                  List.ofSeq calls
              Expect.equal (call (Guidance.classifierFree cm labels 2.0)) [ 6L, [| 7L; 7L; 7L; 9L; 9L; 9L |] ] "batched"
              Expect.equal
                  (call (Guidance.classifierFreeWith GuidanceEvaluation.Separate cm labels 2.0))
                  [ 3L, [| 7L; 7L; 7L |]; 3L, [| 9L; 9L; 9L |] ]
                  "separate"
              Expect.equal (call (Guidance.classifierFree cm labels 0.0)) [ 3L, [| 7L; 7L; 7L |] ] "w = 0"
          }

          test "bad guidance input is refused naming the parameter; a classifier of the wrong shape or without x in it is reported" {
              let sde = Sde.standardVp
              let model = Model.noise (Mixture.noiseModel sde problem)
              let cm = { Forward = Conditional.conditionalNoise sde problem; Output = ModelOutput.Noise; NullLabel = 5L }
              let cls = Conditional.classifier sde problem
              let named (param: string) (f: unit -> obj) (what: string) =
                  try
                      f () |> ignore
                      failtestf "%s: no exception" what
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName param what
              named "labels" (fun () -> box (Guidance.classifierFree cm (torch.tensor ([| 1.0 |])) 1.0)) "float labels"
              named "labels" (fun () -> box (Guidance.classifierFree cm (torch.zeros ([| 2L; 2L |], dtype = torch.int64)) 1.0)) "2-D labels"
              named "w" (fun () -> box (Guidance.classifierFree cm (torch.tensor ([| 1L |])) -1.0)) "negative w"
              named "w" (fun () -> box (Guidance.classifierFree cm (torch.tensor ([| 1L |])) nan)) "NaN w"
              named "scale" (fun () -> box (Guidance.classifier sde model cls (torch.tensor ([| 1L |])) infinity)) "infinite scale"
              use x = points 3L 46L
              use tb = full [| 3L |] 0.5 torch.float64
              named
                  "labels"
                  (fun () -> box ((Guidance.classifierFree cm (torch.tensor ([| 1L; 2L |])) 1.0).Forward x tb))
                  "two labels for three samples"
              named
                  "labels"
                  (fun () -> box ((Guidance.classifier sde model cls (torch.tensor ([| 5L |])) 1.0).Forward x tb))
                  "a label beyond the classes"
              let wrongShape: Tensor -> Tensor -> Tensor = fun x _ -> x.sum ()
              Expect.throwsT<InvalidOperationException>
                  (fun () -> (Guidance.classifier sde model wrongShape (torch.tensor ([| 1L |])) 1.0).Forward x tb |> ignore)
                  "a classifier returning a scalar"
              let constant: Tensor -> Tensor -> Tensor =
                  fun x _ -> torch.zeros ([| x.shape.[0]; 5L |], dtype = torch.float64, requires_grad = true)
              Expect.throwsT<InvalidOperationException>
                  (fun () -> (Guidance.classifier sde model constant (torch.tensor ([| 1L |])) 1.0).Forward x tb |> ignore)
                  "a classifier that ignores x"
          } ]
