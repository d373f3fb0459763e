// Benchmark: the adaptive probability-flow ODE sampler on a 2-D mixture of 8 Gaussians.
//
// Run from the repository root after a Release build (the test command builds it):
//   dotnet fsi docs/ode-benchmark.fsx
// It prints, for each tolerance and step-size control, the model evaluations (NFE), the wall time and
// the accuracy: the distance of every sample to a tight-tolerance solution of the same ODE from the
// same latent, and the sliced Wasserstein-1 distance to exact mixture samples. docs/ode.md records a
// run and compares it with scipy's RK45 (docs/ode-benchmark-scipy.py), the solver the paper used.
// The test pipeline executes this script; it checks itself (see the end).

#r "../src/ScoreSde/bin/Release/net10.0/TorchSharp.dll"
#r "../src/ScoreSde/bin/Release/net10.0/ScoreSde.dll"

open System
open System.Diagnostics
open TorchSharp
open ScoreSde

Native.ensureLoaded ()
// Small tensors on shared cores run faster on one thread (and timings are steadier).
torch.set_num_threads 1

// The data: 8 equal modes on the unit circle, each N(m_k, 0.1^2 I). Every marginal p_t is again a
// mixture, of N(alpha_t m_k, (alpha_t^2 0.1^2 + sigma_t^2) I) with the same weights, so the exact
// score is a softmax-weighted (log-sum-exp) combination of the modes' scores.
let sde = Sde.standardVp
let modeStd = 0.1
let modes =
    torch
        .tensor(
            Array.init 16 (fun i ->
                let angle = 2.0 * Math.PI * float (i / 2) / 8.0
                if i % 2 = 0 then cos angle else sin angle),
            dtype = torch.float64
        )
        .reshape(8L, 2L)

let mixtureScore (x: torch.Tensor) (t: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let tc = t.reshape (-1L, 1L, 1L)
    let a = Sde.alpha sde tc
    let v = a * a * (modeStd * modeStd) + Sde.variance sde tc
    let d = x.unsqueeze (1L) - a * modes.unsqueeze (0L) // [N, 8, 2]: x - alpha_t m_k
    let w = (-(d.square().sum(-1L, keepdim = true)) / (v * 2.0)).softmax(1L)
    (-(w * d).sum(1L) / v.squeeze (-1L)).MoveToOuterDisposeScope()

let model = Model.score mixtureScore
let n = 10_000L
let eps = 1e-3

// Latents: seed 0 on the CPU generator, the same stream as PyTorch's
// torch.randn(10000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).
let latents = torch.randn ([| n; 2L |], dtype = torch.float64, generator = new torch.Generator(0UL, torch.CPU))

let sample (settings: AdaptiveSettings) =
    let watch = Stopwatch.StartNew()
    // the paper's ODE sampler (Sampling.flow) with these Dormand-Prince settings, down to eps
    let sampling =
        { Sampling.flow with
            Method = Method.ProbabilityFlow(OdeMethod.Dopri5 settings)
            Schedule = { Sampling.flow.Schedule with Eps = eps } }
    let r = Sampler.sample sde model sampling (Noise.fromSeed 0L torch.CPU) latents
    r, watch.Elapsed.TotalSeconds

let dopri tol control = { AdaptiveOde.defaults with Rtol = tol; Atol = tol; Control = control }

// Reference: the same ODE from the same latents at rtol = atol = 1e-8 (per-sample control; its own
// error is below 1e-6, far under the errors measured at the tolerances compared).
let reference, referenceTime = sample (dopri 1e-8 StepControl.PerSample)
printfn "reference: Dopri5 rtol = atol = 1e-8 (per-sample), %d evaluations, %.1f s" reference.Nfe referenceTime

// Exact mixture samples (a separate generator) for the sliced Wasserstein-1 distance.
let exactSamples (seed: uint64) =
    let g = new torch.Generator(seed, torch.CPU)
    let k = torch.randint (8L, [| n |], generator = g)
    modes.index_select (0L, k)
    + torch.randn ([| n; 2L |], dtype = torch.float64, generator = g) * modeStd

/// Sliced Wasserstein-1 over 64 evenly spaced directions: mean |sorted projections difference|.
let slicedW1 (a: torch.Tensor) (b: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let angles = torch.linspace (0.0, Math.PI * 63.0 / 64.0, 64L, dtype = torch.float64)
    let dirs = torch.stack([| angles.cos (); angles.sin () |], 1L).t() // [2, 64]
    let struct (pa, _) = a.matmul(dirs).sort(0L)
    let struct (pb, _) = b.matmul(dirs).sort(0L)
    (pa - pb).abs().mean().item<float>()

let exactA, exactB = exactSamples 1UL, exactSamples 2UL
let floor = slicedW1 exactA exactB
printfn "sliced W1 between two independent sets of %d exact mixture samples (Monte Carlo floor): %.4f" n floor
printfn "sliced W1 of the reference samples to exact samples: %.4f" (slicedW1 reference.Samples exactA)
printfn ""
printfn "%-10s %-12s %-8s %5s %8s %12s %12s %10s" "rtol=atol" "control" "PI beta" "NFE" "wall s" "max error" "mean error" "sliced W1"
let controlName c =
    match c with
    | StepControl.PerSample -> "per-sample"
    | StepControl.BatchGlobal -> "batch"

let results =
    [ for tol, control, beta in
          [ for tol in [ 1e-3; 1e-4; 1e-5 ] do
                yield tol, StepControl.BatchGlobal, 0.0
                yield tol, StepControl.BatchGlobal, 0.04
                yield tol, StepControl.PerSample, 0.0
            // accuracy-matched row: at least as accurate as scipy's RK45 at 1e-5 on both measures
            yield 8e-6, StepControl.BatchGlobal, 0.04 ] do
          let r, wall = sample { dopri tol control with PiBeta = beta }
          use dist = (r.Samples - reference.Samples).square().sum(1L).sqrt()
          let maxErr, meanErr = dist.max().item<float>(), dist.mean().item<float>()
          let w1 = slicedW1 r.Samples exactA
          printfn "%-10g %-12s %-8g %5d %8.2f %12.3e %12.3e %10.4f" tol (controlName control) beta r.Nfe wall maxErr meanErr w1
          r.Samples.Dispose()
          yield (tol, control, beta), (r.Nfe, maxErr, meanErr) ]

// Self-checks against scipy's RK45 on the same latents (docs/ode-benchmark-scipy.py, recorded in
// docs/ode.md): 104 evaluations at rtol = atol = 1e-5, errors max 8.07e-4 and mean 1.81e-5.
let scipyNfe, scipyMax, scipyMean = 104, 8.07e-4, 1.81e-5
let find key = results |> List.find (fun (k, _) -> k = key) |> snd
// 1. The default controller at the paper's tolerance: no more evaluations, errors of the same size
//    (within 1.5x: it is the same algorithm, its step sequence differs only through the first step).
let nfe, maxErr, meanErr = find (1e-5, StepControl.BatchGlobal, 0.0)
if nfe > scipyNfe then
    failwithf "batch-global Dopri5 at 1e-5 needed %d evaluations (scipy RK45: %d)" nfe scipyNfe
if maxErr > 1.5 * scipyMax || meanErr > 1.5 * scipyMean then
    failwithf "batch-global Dopri5 at 1e-5: errors max %g, mean %g (scipy: %g, %g)" maxErr meanErr scipyMax scipyMean
// 2. At least scipy's accuracy on both measures for no more evaluations.
let nfe2, maxErr2, meanErr2 = find (8e-6, StepControl.BatchGlobal, 0.04)
if nfe2 > scipyNfe || maxErr2 > scipyMax || meanErr2 > scipyMean then
    failwithf
        "PI-controlled Dopri5 at 8e-6: %d evaluations, errors max %g, mean %g (scipy: %d, %g, %g)"
        nfe2
        maxErr2
        meanErr2
        scipyNfe
        scipyMax
        scipyMean
// 3. Every run's mean error is of the order of its tolerance.
for (tol, _, _), (_, _, mean) in results do
    if mean > 10.0 * tol then
        failwithf "mean error %g at tolerance %g" mean tol
