module ScoreSde.Tests.ImageTrainingTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

/// N labelled 8 x 8 images: class k is a bright band at rows 2k..2k+2 on a dark background, with
/// pixel noise (so the denoiser has structure to learn).
let images (n: int) (seed: int64) =
    use g = generator seed
    let labels = Array.init n (fun i -> int64 (i % 3))
    let levels =
        [| for i in 0 .. n - 1 do
               for r in 0..7 do
                   for c in 0..7 do
                       let band = r >= 2 * int labels.[i] && r < 2 * int labels.[i] + 3
                       let jitter = (i * 31 + r * 7 + c * 13) % 40
                       yield byte ((if band then 200 else 20) + jitter) |]
    { Levels = torch.tensor(levels, dtype = torch.uint8).reshape([| int64 n; 1L; 8L; 8L |])
      Labels = Some labels
      Source = "synthetic bands" }

let private config classes dropout = { UNetTests.tiny 1 8 8 with Classes = classes; Dropout = dropout }

let private settings steps =
    { ImageTraining.defaults with
        Train =
            { ImageTraining.defaults.Train with
                Steps = steps
                BatchSize = 8
                LearningRate = 2e-3
                WarmupSteps = 2 } }

let private stateValues (net: UNet) = net.state_dict().Values |> Seq.map (fun t -> t.data<float32>().ToArray()) |> Seq.toArray

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Image training"
        [ test "a few dozen steps lower the denoising loss on a fixed batch (seed 3)" {
              use set = images 48 3L
              use g = generator 3L
              let net = new UNet(config 0 0.0, g)
              // a fixed evaluation batch drawn from a generator of its own
              use eg = generator 99L
              use x0 = ImageSet.batch PixelRange.Centred torch.float32 (torch.arange 16L) set
              use t = torch.rand ([| 16L |], generator = eg)
              use z = torch.randn ([| 16L; 1L; 8L; 8L |], generator = eg)
              let evalLoss (n: UNet) =
                  n.eval ()
                  use _noGrad = torch.no_grad ()
                  use l = Training.loss Sde.standardVp LossWeighting.Noise (fun x t -> n.Forward(x, t, null)) x0 t z
                  l.item<float32>() |> float
              let before = evalLoss net
              use trainer = ImageTraining.start Sde.standardVp (settings 40) net set (generator 4L)
              ImageTraining.runUntil trainer Int32.MaxValue (fun _ _ -> ()) |> ignore
              let after = evalLoss trainer.Net
              printfn "image training: fixed-batch loss %.4f before, %.4f after 40 steps" before after
              Expect.equal trainer.Step 40 "steps done"
              Expect.isLessThan after (0.8 * before) "the loss falls by at least a fifth"
          }

          test "a run killed after a checkpoint and resumed gives the uninterrupted run's losses and weights bit for bit" {
              // class-conditional with label dropout and network dropout: every kind of draw is exercised;
              // 7 steps of batch 8 over 20 images: the epoch's order is redrawn twice
              use set = images 20 5L
              let s = { settings 7 with LabelDropout = 0.3 }
              let fresh () =
                  use g = generator 6L
                  let net = new UNet(config 3 0.1, g)
                  ImageTraining.start Sde.standardSubVp s net set (generator 7L)
              use whole = fresh ()
              ImageTraining.runUntil whole Int32.MaxValue (fun _ _ -> ()) |> ignore
              use temp = tempDir "resume"
              let run = Path.Combine(temp.Path, "run")
              do
                  use killed = fresh ()
                  let kill =
                      fun step _ ->
                          if step % 2 = 0 then
                              ImageCheckpoint.save run killed (JsonObject()) 2 |> ignore
                          if step = 5 then
                              failwith "killed"
                  Expect.throws (fun () -> ImageTraining.runUntil killed Int32.MaxValue kill |> ignore) "the kill"
              let latest = ImageCheckpoint.latest run
              Expect.equal (latest |> Option.map Path.GetFileName) (Some "step-00000004") "the newest checkpoint"
              use resumed = ImageCheckpoint.load latest.Value set None
              Expect.equal resumed.Step 4 "resumed at step 4"
              ImageTraining.runUntil resumed Int32.MaxValue (fun _ _ -> ()) |> ignore
              Expect.equal resumed.Losses whole.Losses "the same loss curve, bit for bit"
              Expect.equal (stateValues resumed.Net) (stateValues whole.Net) "the same weights"
              Expect.equal (stateValues resumed.Ema) (stateValues whole.Ema) "the same EMA"
              Expect.equal resumed.Epoch whole.Epoch "the same epoch"
          }

          test "checkpoints: the newest kept, no temporary files, latest names the newest, the run directory holds the EMA model" {
              use set = images 16 8L
              use temp = tempDir "ckpt"
              let run = Path.Combine(temp.Path, "run")
              use g = generator 9L
              let net = new UNet(config 3 0.0, g)
              use trainer = ImageTraining.start Sde.standardVe { settings 5 with LabelDropout = 0.2 } net set (generator 10L)
              let meta = JsonObject()
              meta.["command"] <- JsonValue.Create "test"
              ImageTraining.runUntil trainer Int32.MaxValue (fun step _ ->
                  ImageCheckpoint.save run trainer meta 2 |> ignore
                  ImageCheckpoint.saveModel run trainer (JsonObject()))
              |> ignore
              let root = Path.Combine(run, ImageCheckpoint.folder)
              let names = Directory.GetFileSystemEntries root |> Array.map Path.GetFileName |> Array.sort
              Expect.equal names [| "latest"; "step-00000004"; "step-00000005" |] "two newest checkpoints and latest"
              Expect.equal (File.ReadAllText(Path.Combine(root, "latest"))) "step-00000005" "latest"
              Expect.sequenceEqual
                  (Directory.GetFiles(Path.Combine(root, "step-00000005")) |> Array.map Path.GetFileName |> Array.sort)
                  [| "losses.bin"; "state.json"; "tensors.bin" |]
                  "checkpoint files"
              Expect.equal
                  ((ImageCheckpoint.metadata (Path.Combine(root, "step-00000005"))).["command"].GetValue<string>())
                  "test"
                  "metadata"
              Expect.isEmpty (Directory.GetFiles(run, "*.tmp")) "no temporary files"
              use loaded = ModelFile.loadNative run
              Expect.equal loaded.Info.Pixels (Some PixelRange.Centred) "pixel range stored"
              Expect.equal (Sde.name loaded.Info.Sde) "ve" "SDE stored"
              Expect.equal (stateValues (loaded.Network :?> UNet)) (stateValues trainer.Ema) "the EMA weights"
          }

          test "bad settings and data are refused naming the parameter" {
              use set = images 16 11L
              let unlabelled = { set with Labels = None }
              let expectParam name f =
                  let e = throwsOf<ArgumentException> name f
                  Expect.equal e.ParamName name "parameter named"
              use g = generator 12L
              use conditional = new UNet(config 3 0.0, g)
              use plain = new UNet(config 0 0.0, g)
              expectParam "images" (fun () -> ImageTraining.validate (settings 2) conditional unlabelled)
              expectParam "LabelDropout" (fun () -> ImageTraining.validate { settings 2 with LabelDropout = 0.1 } plain set)
              expectParam "LabelDropout" (fun () -> ImageTraining.validate { settings 2 with LabelDropout = 1.0 } conditional set)
              expectParam "BatchSize" (fun () ->
                  ImageTraining.validate (settings 2) plain { set with Levels = set.Levels.narrow (0L, 0L, 4L) })
              use wrong = new UNet(UNetTests.tiny 1 6 6, g)
              expectParam "images" (fun () -> ImageTraining.validate (settings 2) wrong set)
          } ]
