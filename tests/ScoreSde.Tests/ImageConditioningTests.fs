module ScoreSde.Tests.ImageConditioningTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.ImageDataTests
open ScoreSde.Tests.CliTests

/// A tiny U-Net for 1 x 8 x 8 images (random weights of a seed), saved as a model directory.
let private saveUNet (dir: string) (classes: int) (seed: int64) =
    use g = generator seed
    use net = new UNet({ UNetTests.tiny 1 8 8 with Classes = classes }, g)
    ModelFile.saveUNet dir net Sde.standardVp PixelRange.Centred (JsonObject())

/// A tiny classifier of 1 x 8 x 8 images into `classes` classes, saved.
let private saveClassifier (dir: string) (classes: int) (seed: int64) =
    use g = generator seed
    let config = { ClassifierTraining.defaultConfig 1 8 8 classes with Widths = [ 4; 8 ]; Features = 8; Groups = 2 }
    use net = new Classifier(config, g)
    ClassifierFile.save dir net PixelRange.Centred (JsonObject())

/// A .npy array with its shape.
let private readNpy (path: string) = DataFile.toTensor (DataFile.readArray path) torch.float32

/// Width and height of a PNG file, from its IHDR chunk.
let private pngSize (path: string) =
    let b = File.ReadAllBytes path
    let be (o: int) = (int b.[o] <<< 24) ||| (int b.[o + 1] <<< 16) ||| (int b.[o + 2] <<< 8) ||| int b.[o + 3]
    Expect.equal b.[1..3] "PNG"B "a PNG signature"
    be 16, be 20

/// A grid of rows x columns cells of 8 x 8 images at `scale`, 2-pixel gaps around every cell.
let private gridSize (rows: int) (columns: int) (scale: int) = columns * 8 * scale + 2 * (columns + 1), rows * 8 * scale + 2 * (rows + 1)

/// The largest |a - b| where known is true, and the mean |a - b| where it is false.
let private regionDifferences (a: Tensor) (b: Tensor) (known: Tensor) =
    use d = (a - b).abs()
    use k = known.expand (d.shape)
    use inside = d.masked_select (k)
    use outside = d.masked_select (k.logical_not ())
    scalar (inside.max ()), scalar (outside.mean ())

// The command line sets libtorch's thread count (process-wide): run one at a time.
[<Tests>]
let tests =
    testSequenced
    <| testList
        "Command line: inpainting and guidance on images"
        [ test "inpaint keeps the known half of the test images exactly with PC, the flow and DPM-Solver, and writes the grid" {
              use temp = tempDir "inpaint"
              let data = Path.Combine(temp.Path, "data")
              Directory.CreateDirectory data |> ignore
              writeSplit data "t10k" 6 8 8 false
              let model = Path.Combine(temp.Path, "model")
              saveUNet model 2 11L
              use test = FashionMnist.load data Split.Test
              use originals = ImageSet.batch PixelRange.Centred torch.float32 (torch.arange (1L, 4L)) test
              use twice = originals.repeat ([| 2L; 1L; 1L; 1L |])
              // the columns x < 4 are known (the right half hidden), the rows y < 4 for bottom-half
              use cols = torch.arange(8L).reshape([| 1L; 1L; 1L; 8L |])
              use rows = torch.arange(8L).reshape([| 1L; 1L; 8L; 1L |])
              use four = torch.tensor (4L)
              use leftKnown = cols.lt (four)
              use topKnown = rows.lt (four)
              for sampler, extra, mask, known in
                  [ "pc", [ "--steps"; "8" ], "right-half", leftKnown
                    "ode", [ "--solver"; "rk4"; "--steps"; "4" ], "right-half", leftKnown
                    "dpm", [ "--steps"; "6" ], "bottom-half", topKnown
                    "pc", [ "--steps"; "6"; "--replacement"; "fixed" ], "bottom-half", topKnown ] do
                  let out = Path.Combine(temp.Path, sprintf "%s-%s.png" sampler mask)
                  let npy = Path.Combine(temp.Path, sprintf "%s-%s.npy" sampler mask)
                  let log =
                      cliOk (
                          [ "inpaint"; "--model"; model; "--data-dir"; data; "--first"; "1"; "--n"; "3"; "--samples"; "2" ]
                          @ [ "--mask"; mask; "--sampler"; sampler; "--seed"; "5"; "--out"; out; "--npy"; npy ]
                          @ extra
                      )
                  Expect.stringContains log "0 of its 8-bit pixels differ" (sprintf "%s: the reported check" sampler)
                  use samples = readNpy npy
                  Expect.equal samples.shape [| 6L; 1L; 8L; 8L |] "images repeated per sample"
                  let worst, hiddenMean = regionDifferences samples twice known
                  // the finish sets x + m (y - x): float32 rounding of values within a few units
                  let bound = 4.0 * 1.2e-7 * max 1.0 (scalar (samples.abs().max()))
                  Expect.isLessThanOrEqual worst bound (sprintf "%s %s: known pixels equal the inputs (%g)" sampler mask worst)
                  Expect.isGreaterThan hiddenMean 0.01 (sprintf "%s %s: the hidden part is sampled, not copied" sampler mask)
                  Expect.equal (pngSize out) (gridSize 4 3 3) "masked inputs, two sample rows and originals; three columns"
              // a mask file (nonzero where known): the first two rows and the last column
              use fileMask = torch.zeros ([| 8L; 8L |])
              fileMask.narrow(0L, 0L, 2L).fill_(sc 1.0) |> ignore
              fileMask.narrow(1L, 7L, 1L).fill_(sc 1.0) |> ignore
              let maskPath = Path.Combine(temp.Path, "mask.npy")
              DataFile.save maskPath fileMask
              let npy = Path.Combine(temp.Path, "file.npy")
              cliOk
                  [ "inpaint"
                    "--model"
                    model
                    "--data-dir"
                    data
                    "--n"
                    "2"
                    "--mask"
                    maskPath
                    "--sampler"
                    "dpm"
                    "--steps"
                    "5"
                    "--out"
                    Path.Combine(temp.Path, "file.png")
                    "--npy"
                    npy
                    "--scale"
                    "1" ]
              |> ignore
              use samples = readNpy npy
              use first = ImageSet.batch PixelRange.Centred torch.float32 (torch.arange (0L, 2L)) test
              use m = fileMask.gt(sc 0.5).reshape([| 1L; 1L; 8L; 8L |])
              let worst, _ = regionDifferences samples first m
              Expect.isLessThanOrEqual worst 1e-5 "known pixels of a mask file"
          }

          test "inpaint refuses bad input in one line naming the option" {
              use temp = tempDir "inpaint-bad"
              let data = Path.Combine(temp.Path, "data")
              Directory.CreateDirectory data |> ignore
              writeSplit data "t10k" 4 8 8 false
              let model = Path.Combine(temp.Path, "model")
              saveUNet model 0 3L
              let run extra = [ "inpaint"; "--model"; model; "--data-dir"; data ] @ extra
              let out = Path.Combine(temp.Path, "g.png")
              cliFails (run [ "--n"; "2"; "--mask"; "middle"; "--out"; out ]) "--mask must be right-half"
              cliFails (run [ "--n"; "5"; "--out"; out ]) "--first 0 with --n 5 goes past the 4 images"
              cliFails (run [ "--n"; "2"; "--out"; Path.Combine(temp.Path, "g.jpg") ]) "--out must name a .png"
              cliFails (run [ "--n"; "2"; "--sampler"; "ode"; "--replacement"; "fresh"; "--out"; out ]) "--replacement"
              Expect.isFalse (File.Exists out) "no grid after a failure"
              let other = Path.Combine(temp.Path, "data12")
              Directory.CreateDirectory other |> ignore
              writeSplit other "t10k" 4 12 12 false
              cliFails [ "inpaint"; "--model"; model; "--data-dir"; other; "--out"; out ] "--data-dir: the images are"
          }

          test "guidance-sweep: a row per w, w = 0 gives the conditional model's samples exactly, measures recomputed" {
              use temp = tempDir "sweep"
              let data = Path.Combine(temp.Path, "data")
              Directory.CreateDirectory data |> ignore
              writeSplit data "t10k" 12 8 8 false
              let model = Path.Combine(temp.Path, "model")
              let classifier = Path.Combine(temp.Path, "classifier")
              saveUNet model 2 21L
              saveClassifier classifier 2 22L
              let out = Path.Combine(temp.Path, "out")
              let log =
                  cliOk
                      [ "guidance-sweep"
                        "--model"
                        model
                        "--classifier"
                        classifier
                        "--data-dir"
                        data
                        "--weights"
                        "0,1,3"
                        "--n-per-class"
                        "3"
                        "--batch-size"
                        "4"
                        "--steps"
                        "5"
                        "--seed"
                        "7"
                        "--out"
                        out ]
              let table = File.ReadAllLines(Path.Combine(out, "guidance.md"))
              let rows = table |> Array.filter (fun l -> l.StartsWith "| " && not (l.StartsWith "| w "))
              Expect.equal (rows |> Array.map (fun l -> l.Split('|').[1].Trim())) [| "0"; "1"; "3" |] "one row per w, in order"
              Expect.stringContains log rows.[0] "the table is printed"
              for w in [ "0"; "1"; "3" ] do
                  Expect.equal
                      (pngSize (Path.Combine(out, sprintf "grid-w%s.png" w)))
                      (gridSize 2 3 2)
                      (sprintf "grid w = %s: a row per class" w)
              Expect.isTrue (File.Exists(Path.Combine(out, "guidance.png"))) "the plot"
              // w = 0: the class-conditional network itself (UNet.conditionalModel, not the guidance code),
              // batches of 4 from seed 7 + 2b, DPM-Solver++2M with dynamic thresholding, 5 steps
              use loaded = ModelFile.loadNative model
              let net = loaded.Network :?> UNet
              let settings =
                  { DpmSolver.defaults with
                      Algorithm = DpmAlgorithm.DpmSolverPlusPlus
                      Order = 2
                      Thresholding = Thresholding.Dynamic(0.995, 1.0) }
              let sampling =
                  { Sampling.dpmSolver with
                      Method = Method.DpmSolver settings
                      Schedule = { Sampling.dpmSolver.Schedule with Steps = 5 } }
              let labels = [| 0L; 0L; 0L; 1L; 1L; 1L |]
              let expected =
                  [| for b, start, count in [ 0, 0, 4; 1, 4, 2 ] ->
                         use l = torch.tensor (labels.[start .. start + count - 1])
                         let noise = Noise.fromSeed (7L + 2L * int64 b) torch.CPU
                         use xT = Sampler.prior Sde.standardVp [| int64 count; 1L; 8L; 8L |] torch.float32 torch.CPU noise
                         let r =
                             Sampler.sample
                                 Sde.standardVp
                                 (UNet.conditionalModel net l)
                                 sampling
                                 (Noise.fromSeed (8L + 2L * int64 b) torch.CPU)
                                 xT
                         r.Samples |]
              use expected = torch.cat (expected, 0L)
              use w0 = readNpy (Path.Combine(out, "samples-w0.npy"))
              Expect.isTrue (w0.shape = expected.shape && values w0 = values expected) "w = 0 reproduces the conditional model bit for bit"
              use w3 = readNpy (Path.Combine(out, "samples-w3.npy"))
              Expect.isGreaterThan (scalar ((w3 - w0).abs().max())) 1e-3 "w = 3 changes the samples"
              // the w = 0 row's accuracy and Frechet distance, recomputed from the written samples
              use c = ClassifierFile.load classifier
              use levels = Pixels.toLevels PixelRange.Centred w0
              use set = { Levels = levels.clone (); Labels = Some labels; Source = "w0" }
              let accuracy = ClassifierTraining.accuracy c.Classifier c.Pixels 100 set
              use test = FashionMnist.load data Split.Test
              use fa = ClassifierTraining.imageFeatures c.Classifier c.Pixels 100 set
              use fb = ClassifierTraining.imageFeatures c.Classifier c.Pixels 100 test
              let d = Frechet.ofFeatures fa fb
              let cells = rows.[0].Split('|') |> Array.map (fun s -> s.Trim())
              Expect.equal cells.[2] "6" "samples"
              Expect.equal cells.[3] ((100.0 * accuracy).ToString("F1", Globalization.CultureInfo.InvariantCulture) + "%") "accuracy"
              Expect.equal cells.[4] (d.ToString("F2", Globalization.CultureInfo.InvariantCulture)) "Frechet distance"
          }

          test "sample --label / --guidance on a class-conditional U-Net directory: the core's guided samples to the bit" {
              use temp = tempDir "sample-unet-label"
              let model = Path.Combine(temp.Path, "model")
              let unconditional = Path.Combine(temp.Path, "uncond")
              saveUNet model 3 31L
              saveUNet unconditional 0 31L
              let args (extra: string list) (out: string) =
                  [ "sample"
                    "--model"
                    model
                    "--sampler"
                    "pc"
                    "--steps"
                    "6"
                    "--n"
                    "5"
                    "--seed"
                    "3"
                    "--out"
                    out ]
                  @ extra
              let sample (extra: string list) (out: string) = cliOk (args extra out)
              // the guided model built here from the network's forward (not the command line's pieces):
              // (1 + w) eps(x, t, label) - w eps(x, t, null label 3), the two in one batch of 10 (w = 0: the
              // conditional network alone)
              use loaded = ModelFile.loadNative model
              let net = loaded.Network :?> UNet
              let expected (label: int64) (w: float) =
                  use labels = torch.full ([| 5L |], Scalar.op_Implicit label, dtype = torch.int64)
                  use nullLabels = torch.full ([| 5L |], Scalar.op_Implicit 3L, dtype = torch.int64)
                  use both = torch.cat ([| labels; nullLabels |], 0L)
                  let model =
                      Model.noise (fun x t ->
                          if w = 0.0 then
                              net.Forward(x, t, labels)
                          else
                              use x2 = torch.cat ([| x; x |], 0L)
                              use t2 = torch.cat ([| t.reshape (-1L); t.reshape (-1L) |], 0L)
                              use e = net.Forward(x2, t2, both)
                              use c = e.narrow (0L, 0L, 5L)
                              use u = e.narrow (0L, 5L, 5L)
                              torch.add (c * (1.0 + w), u, Scalar.op_Implicit -w))
                  use xT = Sampler.prior Sde.standardVp [| 5L; 1L; 8L; 8L |] torch.float32 torch.CPU (Noise.fromSeed 3L torch.CPU)
                  let r = Sampler.sample Sde.standardVp model (cliPc 6) (Noise.fromSeed 4L torch.CPU) xT
                  r.Samples
              for label, w in [ 1L, 0.0; 2L, 2.5 ] do
                  let out = Path.Combine(temp.Path, sprintf "label%d.npy" label)
                  let log = sample [ "--label"; string label; "--guidance"; string w ] out
                  Expect.stringContains log (sprintf "label %d, guidance %g" label w) "the model line names label and guidance"
                  use got = readNpy out
                  use want = expected label w
                  Expect.isTrue (got.shape = want.shape && values got = values want) (sprintf "label %d, w = %g: bit for bit" label w)
              // the two labels give different samples; without --label the null label (unconditional)
              use a = readNpy (Path.Combine(temp.Path, "label1.npy"))
              use b = readNpy (Path.Combine(temp.Path, "label2.npy"))
              Expect.isGreaterThan (scalar ((a - b).abs().max())) 1e-3 "labels matter"
              let grid = Path.Combine(temp.Path, "grid.png")
              sample [ "--label"; "0" ] grid |> ignore
              // 5 images of 8 x 8: 3 columns, 2 rows, 2-pixel gaps: 3 * 8 + 4 * 2 = 32 by 2 * 8 + 3 * 2 = 22
              Expect.equal (pngSize grid) (32, 22) "a PNG grid of the five samples"
              cliFails (args [ "--label"; "3" ] (Path.Combine(temp.Path, "x.npy"))) "--label must be in 0 .. 2"
              cliFails (args [ "--guidance"; "1" ] (Path.Combine(temp.Path, "x.npy"))) "--guidance needs --label"
              cliFails
                  ([ "sample"
                     "--model"
                     unconditional
                     "--label"
                     "0"
                     "--n"
                     "2"
                     "--out"
                     Path.Combine(temp.Path, "x.npy") ])
                  "need a class-conditional model"
              Expect.isFalse (File.Exists(Path.Combine(temp.Path, "x.npy"))) "nothing written after a failure"
          }

          test "guidance-sweep refuses bad input in one line naming the option" {
              use temp = tempDir "sweep-bad"
              let data = Path.Combine(temp.Path, "data")
              Directory.CreateDirectory data |> ignore
              writeSplit data "t10k" 4 8 8 false
              let model = Path.Combine(temp.Path, "model")
              let unconditional = Path.Combine(temp.Path, "uncond")
              let classifier = Path.Combine(temp.Path, "classifier")
              let three = Path.Combine(temp.Path, "classifier3")
              saveUNet model 2 1L
              saveUNet unconditional 0 1L
              saveClassifier classifier 2 2L
              saveClassifier three 3 2L
              let out = Path.Combine(temp.Path, "out")
              let run m c extra =
                  [ "guidance-sweep"
                    "--model"
                    m
                    "--classifier"
                    c
                    "--data-dir"
                    data
                    "--out"
                    out
                    "--steps"
                    "2" ]
                  @ extra
              cliFails (run model classifier [ "--weights"; "0,-1" ]) "--weights must be numbers"
              cliFails (run model classifier [ "--weights"; "1,1" ]) "each once"
              cliFails (run unconditional classifier []) "not class-conditional"
              cliFails (run model three []) "--classifier has 3 classes; the model 2"
              cliFails (run model classifier [ "--algorithm"; "dpm-solver" ]) "--thresholding applies to DPM-Solver++"
              Expect.isFalse (Directory.Exists out) "nothing written after a failure"
          } ]
