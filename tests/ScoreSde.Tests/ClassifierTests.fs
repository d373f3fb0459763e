module ScoreSde.Tests.ClassifierTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DataFileTests

/// A tiny classifier for 1 x 8 x 8 images: stages of 8 and 16 channels, 16 features, 4 groups.
let private tinyConfig classes timeConditional =
    { ClassifierTraining.defaultConfig 1 8 8 classes with
        Widths = [ 8; 16 ]
        Features = 16
        Groups = 4
        TimeConditional = timeConditional
        FourierFeatures = 4 }

/// A separable image set of 4 textures (a global-pooling CNN sees textures, not positions): class 0
/// horizontal stripes, 1 vertical stripes, 2 a checkerboard, 3 flat grey; levels jittered by up to
/// 40; n images, labels cycling 0..3, jitter from the seed.
let private squares (n: int) (seed: int64) =
    let rnd = Random(int seed)
    let levels =
        [| for i in 0 .. n - 1 do
               for r in 0..7 do
                   for c in 0..7 do
                       let bright =
                           match i % 4 with
                           | 0 -> r % 2 = 0
                           | 1 -> c % 2 = 0
                           | 2 -> (r + c) % 2 = 0
                           | _ -> false
                       let level = if i % 4 = 3 then 110 else (if bright then 200 else 30)
                       yield byte (level + rnd.Next(0, 40)) |]
    { Levels = torch.tensor(levels, dtype = torch.uint8).reshape([| int64 n; 1L; 8L; 8L |])
      Labels = Some(Array.init n (fun i -> int64 (i % 4)))
      Source = "squares" }

[<Tests>]
let tests =
    testList
        "Classifier"
        [ test "logits and features have the right shapes; t matters only for time-conditional classifiers" {
              use g = generator 50L
              use plain = new Classifier(tinyConfig 4 false, g)
              use timed = new Classifier(tinyConfig 4 true, g)
              use x = torch.randn ([| 3L; 1L; 8L; 8L |], generator = g)
              use t1 = torch.full ([| 3L |], sc 0.1)
              use t2 = torch.full ([| 3L |], sc 0.9)
              use _ng = torch.no_grad ()
              let f, l = plain.Run(x, null)
              use f = f
              use l = l
              Expect.equal f.shape [| 3L; 16L |] "features"
              Expect.equal l.shape [| 3L; 4L |] "logits"
              use a = timed.Logits(x, t1)
              use b = timed.Logits(x, t2)
              Expect.isFalse (same a b) "time-conditional: t changes the logits"
              use c = plain.Logits(x, t2)
              Expect.isTrue (same c l) "plain: t ignored"
              Expect.throwsT<ArgumentException> (fun () -> timed.Logits(x, null) |> ignore) "t required"
              Expect.throwsT<ArgumentException> (fun () -> plain.Logits(torch.zeros ([| 1L; 1L; 8L; 9L |]), null) |> ignore) "shape"
          }

          test "every parameter gets a gradient; the same seed builds the same classifier; the global generator is untouched" {
              use g = generator 51L
              use net = new Classifier(tinyConfig 3 true, g)
              use x = torch.randn ([| 4L; 1L; 8L; 8L |], generator = g)
              use t = torch.rand ([| 4L |], generator = g)
              use y = torch.tensor [| 0L; 1L; 2L; 1L |]
              use loss = torch.nn.functional.cross_entropy (net.Logits(x, t), y)
              loss.backward ()
              for struct (name, p) in net.named_parameters () do
                  if isNull p.grad || not (values p.grad |> Array.exists (fun v -> v <> 0.0)) then
                      failtestf "%s has no nonzero gradient" name
              let build seed =
                  use gg = generator seed
                  use n = new Classifier(tinyConfig 3 true, gg)
                  [| for struct (_, p) in n.named_parameters () do
                         yield! values p |]
              torch.manual_seed 7L |> ignore
              use before = torch.rand ([| 3L |])
              torch.manual_seed 7L |> ignore
              let a = build 52L
              use after = torch.rand ([| 3L |])
              Expect.isTrue (same before after) "global generator untouched"
              Expect.equal (build 52L) a "same seed"
              Expect.notEqual (build 53L) a "another seed"
          }

          test "training separates a separable set; save and load keep the outputs (seed 54)" {
              use train = squares 256 54L
              use test = squares 64 55L
              use g = generator 54L
              use net = new Classifier(tinyConfig 4 false, g)
              let before = ClassifierTraining.accuracy net PixelRange.ZeroOne 32 test
              let settings =
                  { ClassifierTraining.defaults with
                      Epochs = 10
                      BatchSize = 32
                      LearningRate = 1e-2
                      WarmupSteps = 5
                      Pixels = PixelRange.ZeroOne }
              let r = ClassifierTraining.train settings net train g
              Expect.equal r.Losses.Length 80 "10 epochs of 8 steps"
              let after = ClassifierTraining.accuracy net PixelRange.ZeroOne 32 test
              Expect.isGreaterThanOrEqual
                  after
                  0.98
                  (sprintf "test accuracy after training (before: %.2f; losses %A)" before r.Losses.[72..])
              Expect.isLessThan (Array.average r.Losses.[72..]) (Array.average r.Losses.[..7]) "the loss went down"
              use dirTemp = tempDir "classifier"
              let dir = Path.Combine(dirTemp.Path, "c")
              let meta = JsonObject()
              meta.["accuracy"] <- JsonValue.Create after
              ClassifierFile.save dir net PixelRange.ZeroOne meta
              use loaded = ClassifierFile.load dir
              Expect.equal loaded.Pixels PixelRange.ZeroOne "pixels"
              Expect.equal loaded.Classifier.Config net.Config "config"
              Expect.equal (loaded.Training.["accuracy"].GetValue<float>()) after "metadata"
              use x = ImageSet.batch PixelRange.ZeroOne torch.float32 (torch.arange 10L) test
              use f1 = ClassifierTraining.features net 4 null x
              use f2 = ClassifierTraining.features loaded.Classifier 4 null x
              Expect.equal f1.shape [| 10L; 16L |] "features of 10 images in batches of 4"
              Expect.isTrue (same f1 f2) "identical features after loading"
              use all = ClassifierTraining.imageFeatures net PixelRange.ZeroOne 16 test
              use first = all.narrow (0L, 0L, 10L)
              // other batch sizes may take other convolution paths: float32 rounding apart
              Array.iter2 (fun a b -> close 1e-5 a b "imageFeatures agrees with features") (values first) (values f1)
          }

          test "a time-conditional classifier trains on noisy inputs x_t from the marginal (seed 56)" {
              use train = squares 256 56L
              use g = generator 56L
              use net = new Classifier(tinyConfig 4 true, g)
              let sde = Sde.standardVp
              let settings =
                  { ClassifierTraining.defaults with
                      Epochs = 25
                      BatchSize = 32
                      LearningRate = 1e-2
                      WarmupSteps = 5
                      Pixels = PixelRange.Centred
                      Marginal = Some(fun t -> Sde.alphaAt sde t, Sde.sigmaAt sde t) }
              let r = ClassifierTraining.train settings net train g
              // at t near 1 the input is noise, so the loss cannot reach 0, but it must fall below
              // chance (log 4 = 1.386) on average
              Expect.isLessThan (Array.average r.Losses.[192..]) 1.2 "average loss of the last epoch below chance"
              use test = squares 64 57L
              Expect.isGreaterThanOrEqual (ClassifierTraining.accuracy net PixelRange.Centred 32 test) 0.9 "clean accuracy (t = 0)"
              Expect.throwsT<ArgumentException>
                  (fun () -> ClassifierTraining.train { settings with Marginal = None } net train g |> ignore)
                  "a time-conditional classifier needs the marginal"
          } ]
