// Images from F#: MNIST-format data, pixel conventions, the score U-Net with class conditioning,
// sampling with it, and U-Net model files. Tiny images, so it runs in seconds without a dataset
// (for Fashion-MNIST itself: `FashionMnist.load FashionMnist.defaultDirectory Split.Train`).
//
// Run from the repository root after a Release build (the test command builds it):
//   dotnet fsi docs/images.fsx
// The test pipeline executes this script, so it cannot rot.

#r "../src/ScoreSde/bin/Release/net10.0/TorchSharp.dll"
#r "../src/ScoreSde/bin/Release/net10.0/ScoreSde.dll"

open System
open System.IO
open TorchSharp
open ScoreSde

Native.ensureLoaded ()
torch.set_num_threads 1

let identical (a: torch.Tensor) (b: torch.Tensor) = a.shape = b.shape && a.eq(b).all().item<bool>()

let fail (what: string) =
    eprintfn "FAILED: %s" what
    exit 1

// 1. Data: a tiny MNIST-format directory (16 images of 12 x 12, gzipped), loaded like Fashion-MNIST.
let dir = Path.Combine(Path.GetTempPath(), sprintf "scoresde-images-doc-%d" Environment.ProcessId)
Directory.CreateDirectory dir |> ignore
let pixels = Array.init (16 * 12 * 12) (fun i -> byte ((i * 37) % 256))
Idx.write (Path.Combine(dir, "train-images-idx3-ubyte.gz")) [| 16; 12; 12 |] pixels
Idx.write (Path.Combine(dir, "train-labels-idx1-ubyte.gz")) [| 16 |] (Array.init 16 (fun i -> byte (i % 3)))
let train = FashionMnist.load dir Split.Train
printfn "loaded %d images of shape %A from %s" train.Count train.SampleShape train.Source

// 2. Pixel conventions: levels to [-1, 1] and back; dequantised values for likelihoods.
let g = new torch.Generator(0UL, torch.CPU)
let indices = torch.arange (8L)
let x0 = ImageSet.batch PixelRange.Centred torch.float32 indices train
let back = Pixels.toLevels PixelRange.Centred x0
let firstEight = train.Levels.narrow (0L, 0L, 8L)
if not (identical back firstEight) then
    fail "levels -> [-1, 1] -> levels"
let dequantised = Pixels.dequantise PixelRange.Centred torch.float32 g firstEight
printfn
    "x0 in [%.3f, %.3f]; dequantised in [%.3f, %.3f]; bits/dim offset %g"
    (x0.min().item<float32>())
    (x0.max().item<float32>())
    (dequantised.min().item<float32>())
    (dequantised.max().item<float32>())
    (Pixels.bitsPerDimOffset PixelRange.Centred)

// 3. A small class-conditional U-Net (3 classes + the null label 3), weights from the generator.
let config =
    { UNet.defaultConfig 1 12 12 with
        BaseChannels = 8
        ChannelMultipliers = [ 1; 2 ]
        BlocksPerLevel = 1
        AttentionResolutions = [ 6 ]
        Groups = 4
        TimeChannels = 32
        Classes = 3 }
let net = new UNet(config, g)
net.eval ()
printfn "U-Net: levels %A, %d parameters" net.LevelHeights net.ParameterCount

// 4. Any sampler takes it as a Model: unconditional (null label) or closing over labels.
let labels = torch.tensor [| 0L; 1L; 2L; 0L |]
let sde = Sde.standardVp
let noise = Noise.fromGenerator g
let xT = Sampler.prior sde [| 4L; 1L; 12L; 12L |] torch.float32 torch.CPU noise
let sample (model: Model) =
    use _noGrad = torch.no_grad ()
    let dpm = Sampling.dpmSolver
    let r = Sampler.sample sde model { dpm with Schedule = { dpm.Schedule with Steps = 5 } } noise xT
    r.Samples
let conditional = sample (UNet.conditionalModel net labels)
let unconditional = sample (UNet.toModel net)
if conditional.shape <> xT.shape || identical conditional unconditional then
    fail "conditional samples have the prior's shape and differ from unconditional ones"
printfn "sampled %A with labels and without (5 DPM-Solver steps; an untrained network, so noise)" conditional.shape

// 5. Save as a model directory (network type "unet", pixel range stored) and load it back.
let modelDir = Path.Combine(dir, "model")
ModelFile.saveUNet modelDir net sde PixelRange.Centred (Text.Json.Nodes.JsonObject())
let loaded = ModelFile.loadNative modelDir
let same =
    use _noGrad = torch.no_grad ()
    let t = torch.rand ([| 4L |], generator = g)
    identical (net.Forward(conditional, t, labels)) ((loaded.Network :?> UNet).Forward(conditional, t, labels))
printfn "%s: %s, pixels %A" loaded.Info.Description (if same then "identical outputs" else "DIFFERENT") loaded.Info.Pixels
Directory.Delete(dir, true)
if not same then
    fail "save and load"
