// Composing a custom predictor-corrector sampler from ScoreSde's core pieces.
//
// Run from the repository root after a Release build (the test command builds it):
//   dotnet fsi docs/composing-samplers.fsx
// The test pipeline executes this script, so it cannot rot.

#r "../src/ScoreSde/bin/Release/net10.0/TorchSharp.dll"
#r "../src/ScoreSde/bin/Release/net10.0/ScoreSde.dll"

open System
open TorchSharp
open ScoreSde

// Load TorchSharp's own libtorch first (guards against another libtorch on the system path).
Native.ensureLoaded ()

// 1. The SDE: the paper's VP-SDE, beta from 0.1 to 20.
let sde = VpSde.create 0.1 20.0

// 2. A model. Here the data are Gaussian, N(mu, s^2) in each of 2 dimensions, so the score of every
//    marginal p_t is known exactly: s(x, t) = -(x - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2).
//    A trained network would go here; it receives x and one time per batch element.
let mu, s = [| 1.5; -1.0 |], [| 0.5; 0.25 |]
let exactScore (x: torch.Tensor) (t: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let tc = t.reshape (-1L, 1L)
    let a = VpSde.alpha sde tc
    let muT = torch.tensor (mu, dtype = x.dtype)
    let s2 = torch.tensor (s |> Array.map (fun v -> v * v), dtype = x.dtype)
    let var = a * a * s2 + (1.0 - a * a)
    (-(x - a * muT) / var).MoveToOuterDisposeScope()
let model = Model.score exactScore

// 3. A custom predictor: the probability-flow Euler step written as a linear-in-score step
//    (mean = A x + B score, plus NoiseStd z). Any (t -> s) rule of this form composes with the
//    library's correctors and grids.
let flowEuler =
    Predictor.Custom(
        "probability-flow Euler",
        fun sde t s ->
            let b = VpSde.betaAt sde t
            let dt = t - s
            { A = 1.0 + 0.5 * b * dt; B = 0.5 * b * dt; NoiseStd = 0.0 }
    )

// 4. Combine: the custom predictor with two Langevin corrector steps per time, on a grid that is
//    uniform in log-SNR. The noise comes from a generator we seed. In 2 dimensions the per-sample
//    norm ratio |z| / |score| of the default Langevin corrector fluctuates too much (it concentrates
//    only in many dimensions, e.g. images), so this low-dimensional toy uses the paper's
//    batch-averaged norms.
let settings =
    { Sampler.pcDefaults with
        Predictor = flowEuler
        Corrector = Corrector.Langevin { Snr = 0.16; Steps = 2; Norm = LangevinNorm.BatchMean }
        Grid = TimeGrid.LogSnr
        Steps = 200 }

let generator = new torch.Generator(2024UL, torch.CPU)
let noise = Noise.fromGenerator generator
let xT = Sampler.prior [| 20000L; 2L |] torch.float64 torch.CPU noise
let result = Sampler.predictorCorrector sde model settings noise xT
let samples = result.Samples

let mean = samples.mean([| 0L |]).data<float>().ToArray()
let std = samples.std(0L).data<float>().ToArray()
printfn "custom sampler: %s + %s, %d model evaluations" (Predictor.name settings.Predictor) (Corrector.name settings.Corrector) result.Nfe
for d in 0..1 do
    printfn "  dim %d: mean %.4f (data %.4f), std %.4f (data %.4f)" d mean.[d] mu.[d] std.[d] s.[d]

// The script checks itself: the moments must match the data to Monte Carlo accuracy plus the
// sampler's discretisation error.
for d in 0..1 do
    if abs (mean.[d] - mu.[d]) > 0.03 || abs (std.[d] - s.[d]) > 0.03 then
        failwithf "dimension %d: moments (%.4f, %.4f) are off the data (%.4f, %.4f)" d mean.[d] std.[d] mu.[d] s.[d]
if result.Nfe <> 200 * 3 then
    failwithf "expected 600 evaluations, got %d" result.Nfe
