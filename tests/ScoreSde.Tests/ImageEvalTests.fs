module ScoreSde.Tests.ImageEvalTests

open System
open System.IO
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Cli
open ScoreSde.Tests.Common
open ScoreSde.Tests.ImageDataTests
open ScoreSde.Tests.CliTests

let private bytes (values: byte[]) = torch.tensor (values, dtype = torch.uint8)

let private fixture (name: string) = Path.Combine(AppContext.BaseDirectory, "fixtures", name)

/// Width and height of a PNG file (its IHDR chunk, big-endian).
let pngSize (path: string) =
    let b = File.ReadAllBytes path
    Expect.sequenceEqual b.[1..3] "PNG"B "a PNG file"
    let be (o: int) = (int b.[o] <<< 24) ||| (int b.[o + 1] <<< 16) ||| (int b.[o + 2] <<< 8) ||| int b.[o + 3]
    be 16, be 20

/// The bits_per_dim column of a likelihood --out CSV file.
let private bitsColumn (path: string) =
    File.ReadAllLines path
    |> Array.skip 1
    |> Array.filter (fun l -> l.Trim() <> "")
    |> Array.map (fun l -> Double.Parse(l.Split(',').[1], Globalization.CultureInfo.InvariantCulture))

/// `likelihood` of a model on the MNIST-format images in `data`.
let private datasetLikelihood (model: string) (data: string) (extra: string list) =
    [ "likelihood"; "--model"; model; "--dataset"; "fashion-mnist"; "--data-dir"; data ] @ extra

/// `likelihood` of the exact Gaussian image model (pixels in [-1, 1]) on the images in `data`.
let private gaussianLikelihood (data: string) (extra: string list) =
    datasetLikelihood (fixture "gaussian_image_eps.pt") data ([ "--pixels"; "centred" ] @ extra)

// VP-SDE (beta 0.1 .. 20): alpha_t and the variance of x_t for elements N(mu, s^2) (the fixture's law)
let private alpha (t: float) = exp (-0.25 * t * t * 19.9 - 0.05 * t)
let private variance (s: float) (t: float) = alpha t ** 2.0 * s * s + 1.0 - alpha t ** 2.0

/// log p of y (one image's D elements, float64) under the probability flow of the exact model of
/// N(mu, s^2) elements started at eps, with the standard normal prior at T = 1: the flow is the affine
/// map x_T = alpha_T mu + (y - alpha_eps mu) sqrt(v_T / v_eps) per element, so
/// log p = sum log N(x_T; 0, 1) + D/2 log(v_T / v_eps).
let private flowLogp (mu: float) (s: float) (eps: float) (y: float[]) =
    let ratio = variance s 1.0 / variance s eps
    y
    |> Array.sumBy (fun v ->
        let xT = alpha 1.0 * mu + (v - alpha eps * mu) * sqrt ratio
        -0.5 * xT * xT - 0.5 * log (2.0 * Math.PI) + 0.5 * log ratio)

// The command line sets libtorch's thread count (process-wide): run one at a time.
[<Tests>]
let tests =
    testSequenced
    <| testList
        "Image evaluation"
        [ test "sample writes a grid of the expected size and the raw N x C x H x W array for every sampler" {
              use temp = tempDir "imgsample"
              let model = fixture "unet_tiny_model"
              for sampler, extra in [ "pc", []; "ode", [ "--solver"; "heun" ]; "dpm", [] ] do
                  let png = Path.Combine(temp.Path, sampler + ".png")
                  let npy = Path.Combine(temp.Path, sampler + ".npy")
                  for out in [ png; npy ] do
                      cliOk (
                          [ "sample"
                            "--model"
                            model
                            "--sampler"
                            sampler
                            "--steps"
                            "4"
                            "--n"
                            "10"
                            "--out"
                            out
                            "--quiet" ]
                          @ extra
                      )
                      |> ignore
                  // 10 images of 2 channels: 20 grey tiles of 5 x 7 in 5 columns, 4 rows, 2-pixel gaps
                  Expect.equal (pngSize png) (5 * 5 + 6 * 2, 4 * 7 + 5 * 2) (sprintf "%s grid size" sampler)
                  let a = Npy.read npy
                  Expect.equal a.Shape [| 10L; 2L; 7L; 5L |] (sprintf "%s array shape" sampler)
                  Expect.isTrue (a.Values |> Array.forall Double.IsFinite) "finite samples"
                  // the grid shows the array's values at their nearest 8-bit level in [-1, 1]
                  use x = DataFile.toTensor a torch.float32
                  use levels = Pixels.toLevels PixelRange.Centred x
                  let grid = Path.Combine(temp.Path, sampler + "-again.png")
                  ImageGrid.writeLevels grid 1 levels
                  Expect.sequenceEqual (File.ReadAllBytes grid) (File.ReadAllBytes png) "the grid is the array's levels"
              // one 28 x 28 grey image per tile for 64 images: 8 x 8 tiles
              Expect.equal (ImageGrid.size 64 28 28 1) (8 * 28 + 9 * 2, 8 * 28 + 9 * 2) "64 Fashion-MNIST images"
              Expect.equal (ImageGrid.size 5 28 28 2) (3 * 56 + 4 * 2, 2 * 56 + 3 * 2) "5 images at scale 2"
          }

          test "sample and likelihood shards merged equal the single-machine run bit for bit" {
              use temp = tempDir "shards"
              let dir = temp.Path
              let model = fixture "unet_tiny_model"
              let p (name: string) = Path.Combine(dir, name)
              // 7 samples in batches of 2: 4 batches over 3 shards (1, 1, 2 batches)
              for sampler, ext in [ "pc", ".npy"; "dpm", ".csv" ] do
                  let common =
                      [ "sample"
                        "--model"
                        model
                        "--sampler"
                        sampler
                        "--steps"
                        "3"
                        "--n"
                        "7"
                        "--batch-size"
                        "2"
                        "--seed"
                        "11"
                        "--quiet" ]
                  cliOk (common @ [ "--noise"; "per-sample"; "--out"; p ("single" + ext) ]) |> ignore
                  let parts = [ for k in 0..2 -> p (sprintf "%s-%d%s" sampler k ext) ]
                  parts
                  |> List.iteri (fun k out -> cliOk (common @ [ "--shard"; sprintf "%d/3" k; "--out"; out ]) |> ignore)
                  let merged = cliOk ([ "merge"; p ("merged" + ext) ] @ parts)
                  Expect.stringContains merged "3 files, 7 rows" "merge summary"
                  Expect.sequenceEqual
                      (File.ReadAllBytes(p ("merged" + ext)))
                      (File.ReadAllBytes(p ("single" + ext)))
                      (sprintf "%s bitwise" sampler)
                  // the per-sample stream differs from the default single stream
                  cliOk (common @ [ "--out"; p ("stream" + ext) ]) |> ignore
                  Expect.notEqual (File.ReadAllBytes(p ("stream" + ext))) (File.ReadAllBytes(p ("single" + ext))) "stream noise differs"
              // likelihood of a dataset's images (dequantisation and Hutchinson probes per image)
              let data = p "data"
              Directory.CreateDirectory data |> ignore
              writeSplit data "t10k" 7 4 3 false
              let common = gaussianLikelihood data [ "--hutchinson"; "1"; "--batch-size"; "2"; "--seed"; "4"; "--quiet" ]
              cliOk (common @ [ "--out"; p "single-l.csv" ]) |> ignore
              let parts = [ for k in 0..2 -> p (sprintf "l-%d.csv" k) ]
              parts
              |> List.iteri (fun k out -> cliOk (common @ [ "--shard"; sprintf "%d/3" k; "--out"; out ]) |> ignore)
              let merged = cliOk ([ "merge"; p "merged-l.csv" ] @ parts)
              let single = File.ReadAllLines(p "single-l.csv")
              let bits =
                  single.[1..]
                  |> Array.map (fun l -> Double.Parse(l.Split(',').[1], Globalization.CultureInfo.InvariantCulture))
              let mean = (Array.average bits).ToString("F4", Globalization.CultureInfo.InvariantCulture)
              Expect.stringContains merged (mean + " bits/dim") "merge prints the run's mean bits/dim"
              Expect.sequenceEqual (File.ReadAllBytes(p "merged-l.csv")) (File.ReadAllBytes(p "single-l.csv")) "likelihood bitwise"
          }

          test "bad shards and merges are refused in one line, leaving no file" {
              use temp = tempDir "badshards"
              let p (name: string) = Path.Combine(temp.Path, name)
              let model = fixture "unet_tiny_model"
              let sample = [ "sample"; "--model"; model; "--steps"; "2"; "--n"; "4"; "--batch-size"; "2" ]
              for bad in [ "3/3"; "1"; "a/b"; "-1/2"; "0/0" ] do
                  cliFails (sample @ [ "--shard"; bad; "--out"; p "x.npy" ]) "--shard must be K/N"
              cliFails (sample @ [ "--shard"; "0/2"; "--noise"; "stream"; "--out"; p "x.npy" ]) "--noise"
              cliFails [ "sample"; "--model"; model; "--steps"; "2"; "--n"; "4"; "--shard"; "0/2"; "--out"; p "x.npy" ] "gets no batch"
              Expect.isFalse (File.Exists(p "x.npy")) "no output"
              cliOk (sample @ [ "--out"; p "a.npy"; "--quiet" ]) |> ignore
              DataFile.save (p "b.npy") (torch.zeros ([| 2L; 3L |]))
              cliFails [ "merge"; p "m.npy"; p "a.npy"; p "b.npy" ] "agree in all but the first axis"
              File.WriteAllLines(p "a.csv", [| "x,y"; "1,2" |])
              File.WriteAllLines(p "b.csv", [| "u,v"; "3,4" |])
              cliFails [ "merge"; p "m.csv"; p "a.csv"; p "b.csv" ] "another header line"
              cliFails [ "merge"; p "m.csv"; p "a.csv"; p "a.npy" ] "must be .csv files"
              Expect.isFalse (File.Exists(p "m.npy") || File.Exists(p "m.csv")) "no merged file"
              Expect.isEmpty (Directory.GetFiles(temp.Path, "*.tmp*")) "no temporary file left"
          }

          test "likelihood --dataset: bits/dim of an exact Gaussian model equal the closed form" {
              use temp = tempDir "gausslik"
              let data = Path.Combine(temp.Path, "data")
              Directory.CreateDirectory data |> ignore
              writeSplit data "t10k" 5 3 4 true
              let out = Path.Combine(temp.Path, "l.csv")
              let summary = cliOk (gaussianLikelihood data [ "--hutchinson"; "2"; "--seed"; "9"; "--n"; "4"; "--out"; out ])
              Expect.stringContains summary "over 4 points of the test split" "the first --n images"
              let bits = bitsColumn out
              Expect.equal bits.Length 4 "one row per image"
              // the images as the command dequantises them (float32, the TorchScript model's dtype)
              use test = FashionMnist.load data Split.Test
              use levels = test.Levels.narrow (0L, 0L, 4L)
              use y = ImageEval.dequantise PixelRange.Centred torch.float32 9L 0 levels
              use y64 = y.to_type(torch.float64).reshape([| 4L; 12L |])
              let rows = Tensors.toHost y64 |> Array.chunkBySize 12
              let mutable worst = 0.0
              for i in 0..3 do
                  // 12 elements; [-1, 1] pixels: +7 bits for the 256 bins of width 2/256
                  let expected = -(flowLogp 0.25 0.5 1e-5 rows.[i]) / (12.0 * log 2.0) + 7.0
                  worst <- max worst (abs (bits.[i] - expected))
              printfn "Gaussian image likelihood: largest bits/dim error %.2e" worst
              // dopri5 at rtol = atol = 1e-5 on float32 evaluations: a few 1e-5 in log p per element
              Expect.isLessThan worst 2e-4 "bits/dim against the closed form"
              cliFails (datasetLikelihood (fixture "gaussian_image_eps.pt") data []) "--pixels"
              cliFails (datasetLikelihood (fixture "unet_tiny_model") data []) "shape"
          }

          test "dequantisation: one draw per pixel inside its bin, the same for an image in any batch" {
              use levels = (bytes ([| 0uy; 255uy; 7uy; 128uy; 3uy; 200uy |])).reshape([| 3L; 1L; 1L; 2L |])
              for range in [ PixelRange.ZeroOne; PixelRange.Centred ] do
                  use all = ImageEval.dequantise range torch.float64 5L 0 levels
                  let v = Tensors.toHost all
                  let b = [| 0.0; 255.0; 7.0; 128.0; 3.0; 200.0 |]
                  for i in 0..5 do
                      let u = (v.[i] - Pixels.lower range) / Pixels.width range * 256.0 - b.[i]
                      Expect.isTrue (u >= 0.0 && u < 1.0) (sprintf "%A pixel %d: u = %g in [0, 1)" range i u)
                  use tail = levels.narrow (0L, 1L, 2L)
                  use part = ImageEval.dequantise range torch.float64 5L 1 tail
                  Expect.sequenceEqual (Tensors.toHost part) v.[2..] "images 1 and 2 alone get their noise in the batch"
              use other = ImageEval.dequantise PixelRange.ZeroOne torch.float64 6L 0 levels
              use same = ImageEval.dequantise PixelRange.ZeroOne torch.float64 5L 0 levels
              Expect.notEqual (Tensors.toHost other) (Tensors.toHost same) "another seed, other noise"
          }

          test "baselines on a tiny dataset equal a hand computation" {
              // training images of 2 pixels: (0, 1), (0, 2), (255, 1); test images (0, 2), (9, 1)
              use train = (bytes ([| 0uy; 1uy; 0uy; 2uy; 255uy; 1uy |])).reshape([| 3L; 1L; 1L; 2L |])
              use test = (bytes ([| 0uy; 2uy; 9uy; 1uy |])).reshape([| 2L; 1L; 1L; 2L |])
              let cat = PixelBaselines.categorical 1.0 train test
              // Laplace: (count + 1) / (3 + 256); pixel 0 saw 0 twice, 9 never; pixel 1 saw 2 once, 1 twice
              let l2 (x: float) = log x / log 2.0
              Expect.floatClose Accuracy.veryHigh cat.[0] (-(l2 (3.0 / 259.0) + l2 (2.0 / 259.0)) / 2.0) "categorical, image 0"
              Expect.floatClose Accuracy.veryHigh cat.[1] (-(l2 (1.0 / 259.0) + l2 (3.0 / 259.0)) / 2.0) "categorical, image 1"
              let half = PixelBaselines.categorical 0.5 train test
              Expect.floatClose Accuracy.veryHigh half.[0] (-(l2 (2.5 / 131.0) + l2 (1.5 / 131.0)) / 2.0) "smoothing 1/2"
              // Gaussian in level units: mean (85, 4/3) + 1/2, covariance (1/N) + I/12, by hand in 2 x 2
              let m0, m1 = 85.0, 4.0 / 3.0
              let c00 = ((0.0 - m0) ** 2.0 * 2.0 + (255.0 - m0) ** 2.0) / 3.0 + 1.0 / 12.0
              let c11 = ((1.0 - m1) ** 2.0 * 2.0 + (2.0 - m1) ** 2.0) / 3.0 + 1.0 / 12.0
              let c01 = ((0.0 - m0) * (1.0 - m1) + (0.0 - m0) * (2.0 - m1) + (255.0 - m0) * (1.0 - m1)) / 3.0
              let det = c00 * c11 - c01 * c01
              let i00, i11, i01 = c11 / det, c00 / det, -c01 / det
              let expected (b0: float) (b1: float) =
                  let d0, d1 = b0 - m0, b1 - m1
                  let quad = d0 * d0 * i00 + 2.0 * d0 * d1 * i01 + d1 * d1 * i11
                  (2.0 * log (2.0 * Math.PI) + log det + quad + (i00 + i11) / 12.0) / (2.0 * 2.0 * log 2.0)
              let gauss = PixelBaselines.gaussian train test
              Expect.floatClose Accuracy.veryHigh gauss.[0] (expected 0.0 2.0) "Gaussian, image 0"
              Expect.floatClose Accuracy.veryHigh gauss.[1] (expected 9.0 1.0) "Gaussian, image 1"
              // the expectation over u ~ U(0, 1)^2 against a Monte Carlo average of -log2 N(b + u)
              let rng = Random(17)
              let draws = 200000
              let mutable acc = 0.0
              for _ in 1..draws do
                  let d0, d1 = 9.0 + rng.NextDouble() - 0.5 - m0, 1.0 + rng.NextDouble() - 0.5 - m1
                  let quad = d0 * d0 * i00 + 2.0 * d0 * d1 * i01 + d1 * d1 * i11
                  acc <- acc + (2.0 * log (2.0 * Math.PI) + log det + quad) / (4.0 * log 2.0)
              Expect.floatClose
                  { absolute = 2e-3; relative = 0.0 }
                  (acc / float draws)
                  gauss.[1]
                  "Monte Carlo over the dequantisation noise"
          }

          test "baselines on an MNIST-format directory print both models' mean bits/dim" {
              use temp = tempDir "baselines"
              writeSplit temp.Path "train" 30 4 3 false
              writeSplit temp.Path "t10k" 6 4 3 false
              let log = cliOk [ "baselines"; "--data-dir"; temp.Path; "--n"; "5" ]
              use train = FashionMnist.load temp.Path Split.Train
              use test = FashionMnist.load temp.Path Split.Test
              use first = test.Levels.narrow (0L, 0L, 5L)
              let mean (v: float[]) = (Array.average v).ToString("F4", Globalization.CultureInfo.InvariantCulture)
              Expect.stringContains log (mean (PixelBaselines.categorical 1.0 train.Levels first) + " bits/dim") "categorical"
              Expect.stringContains log (mean (PixelBaselines.gaussian train.Levels first) + " bits/dim") "Gaussian"
              Expect.stringContains log "scored on 5 test images" "the first --n"
          }
          test "evaluate writes the table, the plot and the grids, with the distances 'sample' and 'frechet' give" {
              use temp = tempDir "evaluate"
              let p (name: string) = Path.Combine(temp.Path, name)
              let data = p "data"
              Directory.CreateDirectory data |> ignore
              writeSplit data "train" 40 12 12 false
              writeSplit data "t10k" 20 12 12 false
              cliOk
                  [ "classifier"
                    "--data-dir"
                    data
                    "--out"
                    p "classifier"
                    "--epochs"
                    "1"
                    "--batch-size"
                    "8"
                    "--quiet" ]
              |> ignore
              use g = new torch.Generator(5UL)
              use net = new UNet(ScoreSde.Tests.UNetTests.tiny 1 12 12, g)
              ModelFile.saveUNet (p "model") net Sde.standardVp PixelRange.Centred (Text.Json.Nodes.JsonObject())
              let out = p "eval"
              let args =
                  [ "evaluate"
                    "--model"
                    p "model"
                    "--data-dir"
                    data
                    "--samplers"
                    "pc,dpm"
                    "--budgets"
                    "2,4"
                    "--n"
                    "8"
                    "--batch-size"
                    "4"
                    "--test-n"
                    "8"
                    "--grid"
                    "5"
                    "--seed"
                    "3"
                    "--out"
                    out
                    "--quiet" ]
              // without the classifier: the samples and grids only; with it, the samples are reused
              Expect.stringContains (cliOk args) "give --classifier" "samples only"
              let npy = Path.Combine(out, "samples-dpm-4.npy")
              let written = File.GetLastWriteTimeUtc npy
              Expect.equal (Npy.read npy).Shape [| 8L; 1L; 12L; 12L |] "the samples in the model's range"
              cliOk (args @ [ "--classifier"; p "classifier" ]) |> ignore
              Expect.equal (File.GetLastWriteTimeUtc npy) written "samples reused, not drawn again"
              let table = File.ReadAllLines(Path.Combine(out, "evaluation.md"))
              let rows = table |> Array.filter (fun l -> l.StartsWith "| ") |> Array.skip 1
              Expect.equal rows.Length 5 "4 runs and the floor"
              let cell (row: string) (k: int) = row.Split('|').[k + 1].Trim()
              Expect.equal (cell rows.[0] 2) "2" "pc at 2 evaluations: 1 step of predictor + corrector"
              Expect.equal (cell rows.[3] 2) "4" "dpm at 4 evaluations"
              for name in [ "pc-2"; "pc-4"; "dpm-2"; "dpm-4" ] do
                  Expect.equal (pngSize (Path.Combine(out, sprintf "grid-%s.png" name))) (ImageGrid.size 5 12 12 2) name
              Expect.equal (pngSize (Path.Combine(out, "frechet.png"))) (800, 500) "plot"
              // the floor is 'frechet' of the first 8 training images against the first 8 test images
              let floor = cliOk [ "frechet"; "--classifier"; p "classifier"; "--data-dir"; data; "--n"; "8" ]
              Expect.stringContains floor (sprintf "Frechet distance %s between" (cell rows.[4] 5)) "floor"
              // the dpm row at 4 evaluations is 'sample' with per-sample noise in the same batches, then 'frechet'
              cliOk
                  [ "sample"
                    "--model"
                    p "model"
                    "--sampler"
                    "dpm"
                    "--steps"
                    "4"
                    "--n"
                    "8"
                    "--batch-size"
                    "4"
                    "--noise"
                    "per-sample"
                    "--seed"
                    "3"
                    "--out"
                    p "dpm.npy"
                    "--quiet" ]
              |> ignore
              let dpm =
                  cliOk
                      [ "frechet"
                        "--classifier"
                        p "classifier"
                        "--data-dir"
                        data
                        "--samples"
                        p "dpm.npy"
                        "--n"
                        "8" ]
              Expect.stringContains dpm (sprintf "Frechet distance %s between" (cell rows.[3] 5)) "dpm at 4 evaluations"
              let fails (extra: string list) (fragment: string) =
                  cliFails
                      ([ "evaluate"
                         "--model"
                         p "model"
                         "--classifier"
                         p "classifier"
                         "--data-dir"
                         data
                         "--out"
                         p "e2" ]
                       @ extra)
                      fragment
              fails [ "--samplers"; "bogus" ] "unknown sampler"
              fails [ "--budgets"; "0,2" ] "--budgets"
          } ]
