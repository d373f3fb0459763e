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

// 1. The SDE: a value. The paper's VP-SDE (beta from 0.1 to 20), its sub-VP SDE, or the VE SDE
//    (sigma from 0.01 to 50); everything below works with any of them.
let sdes = [ Sde.vp 0.1 20.0; Sde.standardSubVp; Sde.standardVe ]

// 2. A model. Here the data are Gaussian, N(mu, s^2) in each of 2 dimensions, so the score of every
//    marginal p_t = N(alpha_t mu, alpha_t^2 s^2 + sigma_t^2) is known exactly. A trained network would
//    go here; it receives x and one time per batch element.
let mu, s = [| 1.5; -1.0 |], [| 0.5; 0.25 |]
let exactScore (sde: Sde) (x: torch.Tensor) (t: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let tc = t.reshape (-1L, 1L)
    let a = Sde.alpha sde tc
    let muT = torch.tensor (mu, dtype = x.dtype)
    let s2 = torch.tensor (s |> Array.map (fun v -> v * v), dtype = x.dtype)
    let var = a * a * s2 + Sde.variance sde tc
    (-(x - a * muT) / var).MoveToOuterDisposeScope()

// 3. A custom predictor: the probability-flow Euler step written as a linear-in-score step
//    (mean = A x + B score, plus NoiseStd z), from the SDE's own f(t) and g(t)^2:
//    x - [f x - 1/2 g^2 score] dt. Any (t -> s) rule of this form composes with the library's
//    correctors and grids, for every SDE.
let flowEuler =
    Predictor.Custom(
        "probability-flow Euler",
        fun sde t s ->
            let dt = t - s
            { A = 1.0 - Sde.driftAt sde t * dt; B = 0.5 * Sde.diffusionSquaredAt sde t * dt; NoiseStd = 0.0 }
    )

// 4. Combine: the custom predictor with two Langevin corrector steps per time, on a grid that is
//    uniform in log-SNR, and the last step's mean returned. The noise comes from a generator we seed.
//    In 2 dimensions the per-sample norm ratio |z| / |score| of the Langevin corrector fluctuates too
//    much (it concentrates only in many dimensions, e.g. images), so this low-dimensional toy uses the
//    paper's batch-averaged norms. One entry point runs it: `Sampler.sample`.
let sampling =
    { Sampling.pc with
        Method = Method.PredictorCorrector(flowEuler, Corrector.Langevin { Snr = 0.16; Steps = 2; Norm = LangevinNorm.BatchMean })
        Schedule = Schedule.create TimeGrid.LogSnr 200 1e-3 }

for sde in sdes do
    let generator = new torch.Generator(2024UL, torch.CPU)
    let noise = Noise.fromGenerator generator
    let xT = Sampler.prior sde [| 20000L; 2L |] torch.float64 torch.CPU noise
    let result = Sampler.sample sde (Model.score (exactScore sde)) sampling noise xT
    let samples = result.Samples
    let mean = samples.mean([| 0L |]).data<float>().ToArray()
    let std = samples.std(0L).data<float>().ToArray()
    printfn "%s, custom sampler: %s + Langevin, %d model evaluations" (Sde.describe sde) (Predictor.name flowEuler) result.Nfe
    for d in 0..1 do
        printfn "  dim %d: mean %.4f (data %.4f), std %.4f (data %.4f)" d mean.[d] mu.[d] std.[d] s.[d]
    // The script checks itself: the moments must match the data to Monte Carlo accuracy plus the
    // sampler's discretisation error.
    for d in 0..1 do
        if abs (mean.[d] - mu.[d]) > 0.03 || abs (std.[d] - s.[d]) > 0.03 then
            failwithf "%s, dimension %d: moments (%.4f, %.4f) are off the data (%.4f, %.4f)" (Sde.name sde) d mean.[d] std.[d] mu.[d] s.[d]
    if result.Nfe <> 200 * 3 then
        failwithf "expected 600 evaluations, got %d" result.Nfe
    samples.Dispose()
