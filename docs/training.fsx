// Training a score model from F#: data, network, denoising score matching, sampling, measuring,
// saving and loading. The same pieces the `scoresde` command line is built from.
//
// Run from the repository root after a Release build (the test command builds it):
//   dotnet fsi docs/training.fsx
// The test pipeline executes this script, so it cannot rot.

#r "../src/ScoreSde/bin/Release/net10.0/TorchSharp.dll"
#r "../src/ScoreSde/bin/Release/net10.0/ScoreSde.dll"

open System
open System.IO
open TorchSharp
open ScoreSde

Native.ensureLoaded ()
// Small networks run fastest on one thread here (a process-wide setting: fine in a script).
torch.set_num_threads 1

// 1. Data: a built-in 2-D dataset drawn from a seeded generator (the same seed, the same points).
//    User data: `DataFile.load "points.csv" torch.float32` (or a .npy file) gives the same [N, D] shape.
let sde = Sde.standardVp
let gData = new torch.Generator(1UL, torch.CPU)
let train = ToyDataset.sample ToyDataset.Moons 5000 torch.float32 gData
let heldOut = ToyDataset.sample ToyDataset.Moons 2000 torch.float32 gData

// 2. A time-conditioned MLP that predicts the noise eps(x, t). Its weights are drawn from the
//    generator passed in, never from torch's global generator, so a seed reproduces it exactly.
let g = new torch.Generator(2UL, torch.CPU)
let net = new ScoreNet(ScoreNet.defaultConfig 2, g)

// 3. Denoising score matching with Adam and an exponential moving average of the weights. Batch
//    indices, times t ~ U(eps, 1) and noise all come from `g` as well.
let settings =
    { Training.defaults with
        Steps = 1500
        BatchSize = 256
        LearningRate = 1e-2
        Observer =
            Some(fun step loss ->
                if step % 500 = 0 then
                    printfn "step %4d  loss %.4f" step loss) }
let result = Training.train sde settings net train g
printfn "trained %d steps in %.1f s (%.0f steps/s)" settings.Steps result.Seconds result.StepsPerSecond

// 4. Sample with the EMA network through any sampler of the library: here the probability-flow ODE.
let model = ScoreNet.toModel result.Ema
let xT = Sampler.prior sde [| 2000L; 2L |] torch.float32 torch.CPU (Noise.fromSeed 3L torch.CPU)
let flow =
    { Sampling.flow with
        Method = Method.ProbabilityFlow(OdeMethod.FixedStep OdeSolver.Rk4)
        Schedule = Schedule.uniform 25 1e-3 }
let samples = (Sampler.sample sde model flow (Noise.fromSeed 4L torch.CPU) xT).Samples

// 5. Measure: sliced Wasserstein-1 distance to held-out data, against the prior noise it started from.
let trained = Metrics.slicedWasserstein1 samples heldOut
let prior = Metrics.slicedWasserstein1 xT heldOut
printfn "sliced W1 to held-out data: samples %.4f, prior noise %.4f" trained prior
if not (trained < 0.5 * prior) then
    eprintfn "FAILED: the trained model's samples should be much closer to the data than the prior"
    exit 1

// 6. Save in the library's format (config.json + weights.bin) and load it back: same outputs.
let dir = Path.Combine(Path.GetTempPath(), sprintf "scoresde-doc-%d" (Environment.ProcessId))
let same =
    try
        ModelFile.save dir result.Ema sde None (Text.Json.Nodes.JsonObject())
        let loaded = ModelFile.loadNative dir
        let x = torch.randn ([| 8L; 2L |], generator = g)
        let t = torch.rand ([| 8L |], generator = g)
        use _noGrad = torch.no_grad ()
        (result.Ema.forward (x, t) - loaded.Model.Forward x t).abs().max().item<float32>() = 0.0f
    finally
        if Directory.Exists dir then
            Directory.Delete(dir, true)
printfn "saved to %s and loaded back: %s" dir (if same then "identical outputs" else "DIFFERENT outputs")
if not same then
    exit 1
