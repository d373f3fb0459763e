// Few-step sampling with DPM-Solver and DPM-Solver++ (see docs/dpm-solver.md).
//
// Run from the repository root after a Release build (the test command builds it):
//   dotnet fsi docs/few-step-sampling.fsx
// The test pipeline executes this script; it checks its own results and exits non-zero when wrong.

#r "../src/ScoreSde/bin/Release/net10.0/TorchSharp.dll"
#r "../src/ScoreSde/bin/Release/net10.0/ScoreSde.dll"

open System
open TorchSharp
open ScoreSde

Native.ensureLoaded ()
torch.set_num_threads 1

let sde = Sde.standardVp

// Gaussian data N(mu, diag(s^2)): the noise prediction of every marginal is exact,
// eps(x, t) = sigma_t (x - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2), and so is the probability-flow map
// from T to eps: (x - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2) stays constant along it.
let mu, s = [| 1.5; -1.0 |], [| 0.5; 0.25 |]
let noisePrediction (x: torch.Tensor) (t: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let tc = t.reshape (-1L, 1L)
    let a = Sde.alpha sde tc
    let sd = Sde.sigma sde tc
    let var = a * a * torch.tensor (s |> Array.map (fun v -> v * v), dtype = x.dtype) + sd * sd
    (sd * (x - a * torch.tensor (mu, dtype = x.dtype)) / var).MoveToOuterDisposeScope()
let model = Model.noise noisePrediction

let exactFlow (xT: float) (d: int) =
    let marginal t = Sde.alphaAt sde t * mu.[d], Sde.alphaAt sde t ** 2.0 * s.[d] ** 2.0 + Sde.varianceAt sde t
    let m1, v1 = marginal sde.T
    let m0, v0 = marginal 1e-3
    m0 + sqrt (v0 / v1) * (xT - m1)

// One latent for every run, from a seeded generator.
let generator = new torch.Generator(7UL)
let xT = Sampler.prior sde [| 4096L; 2L |] torch.float64 torch.CPU (Noise.fromGenerator generator)
let latent = xT.data<float>().ToArray()

// A run is a value: the method's settings, a schedule (grid, evaluations, end time) and a finish; start
// from the DPM-Solver preset (DPM-Solver multistep order 3 with the published update, 20 evaluations on
// the logSNR grid to eps = 1e-3) and change what you need.
let dpm (settings: DpmSolverSettings) (schedule: Schedule) =
    { Sampling.dpmSolver with Method = Method.DpmSolver settings; Schedule = schedule }
let logSnr steps = Schedule.create TimeGrid.LogSnr steps 1e-3
let plusPlus = { DpmSolver.defaults with Algorithm = DpmAlgorithm.DpmSolverPlusPlus }
let runs =
    [ "DPM-Solver-3M, 15 evaluations", dpm DpmSolver.defaults (logSnr 15)
      "DPM-Solver++3M, 15 evaluations", dpm plusPlus (logSnr 15)
      "DPM-Solver-3M Taylor-exact, 15 evaluations", dpm { DpmSolver.defaults with ThirdOrder = DpmThirdOrder.TaylorExact } (logSnr 15)
      "DPM-Solver-3S, 15 evaluations, quadratic grid",
      dpm { DpmSolver.defaults with Method = DpmMethod.SingleStep } (Schedule.create TimeGrid.Quadratic 15 1e-3)
      "DPM-Solver++2M, explicit grid",
      dpm { plusPlus with Order = 2 } (Schedule.ofTimes [| 1.0; 0.6; 0.35; 0.2; 0.1; 0.05; 0.02; 0.008; 0.003; 0.001 |])
      "adaptive DPM-Solver++-23, rtol = atol = 1e-3",
      dpm
          { plusPlus with
              Method = DpmMethod.Adaptive { DpmSolver.adaptiveDefaults with Rtol = 1e-3; Atol = 1e-3 } }
          (logSnr 20) ]

let mutable failures = 0
for name, sampling in runs do
    let r = Sampler.sample sde model sampling (Noise.fromSeed 0L torch.CPU) xT
    let x = r.Samples.data<float>().ToArray()
    let err = x |> Array.mapi (fun i v -> (v - exactFlow latent.[i] (i % 2)) ** 2.0) |> Array.average |> sqrt
    printfn "%-48s %3d evaluations, RMS distance to the exact flow %.2e" name r.Nfe err
    // the runs land within ~1e-2 RMS of the exact map (a data standard deviation is 0.25 or 0.5; the
    // tests measure the convergence orders); 0.02 flags anything broken
    let budgetOk =
        match sampling.Method, sampling.Schedule.Grid with
        | Method.DpmSolver { Method = DpmMethod.Adaptive _ }, _ -> true
        | _, TimeGrid.Explicit ts -> r.Nfe = ts.Length - 1
        | _ -> r.Nfe = sampling.Schedule.Steps
    if err > 0.02 || not budgetOk then
        eprintfn "FAILED: %s (error %g, %d evaluations)" name err r.Nfe
        failures <- failures + 1
    r.Samples.Dispose()

xT.Dispose()
if failures > 0 then
    exit 1
