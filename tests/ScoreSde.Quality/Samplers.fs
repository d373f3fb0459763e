/// Every sampler of the library as a `Sampling` value for an evaluation budget, run through the library's
/// single entry point (`Sampler.sample`). Adding a sampler is one line in `fixedBudget` (or `adaptive`
/// for samplers that choose their own number of evaluations).
module ScoreSde.Quality.Samplers

open System
open TorchSharp
open ScoreSde

type Tensor = torch.Tensor

/// A sampler at a requested number of model evaluations; None when the budget is too small for the
/// method (e.g. RK4 below 4 evaluations). A run may use fewer evaluations than requested when its
/// evaluations per step do not divide the budget (it reports what it used).
type FixedBudget = { Name: string; Family: string; At: Sde -> int -> Sampling option }

/// A sampler that chooses its own number of evaluations (adaptive step size).
type Adaptive = { Name: string; Sampling: Sampling }

/// Seed of the PC samplers' noise (fixed, so a run is reproducible).
let pcSeed = 2024L

/// Every run's end time.
let eps = 1e-3

/// Run a configuration from the latent xT through the entry point, the stochastic steps' noise seeded.
let runSeeded (seed: int64) (sde: Sde) (model: Model) (sampling: Sampling) (xT: Tensor) : SampleResult =
    Sampler.sample sde model sampling (Noise.fromSeed seed torch.CPU) xT

/// Run a configuration from the latent xT through the entry point (noise seed `pcSeed`).
let run (sde: Sde) (model: Model) (sampling: Sampling) (xT: Tensor) : SampleResult = runSeeded pcSeed sde model sampling xT

/// The PC sampler on `steps` uniform steps, returning the last step's mean (the paper's).
let pcSampling (predictor: Predictor) (corrector: Corrector) (steps: int) =
    { Sampling.pc with
        Method = Method.PredictorCorrector(predictor, corrector)
        Schedule = Schedule.uniform steps eps }

let private pc (predictor: Predictor) (corrector: Corrector) (perStep: int) =
    fun (_: Sde) budget ->
        let steps = budget / perStep
        // the discrete predictors want at least 2 steps
        if steps < 2 then None else Some(pcSampling predictor corrector steps)

let private ode (solver: OdeSolver) (grid: TimeGrid) =
    fun (_: Sde) budget ->
        let steps = budget / OdeSolver.evaluationsPerStep solver
        if steps < 1 then
            None
        else
            Some
                { Sampling.flow with
                    Method = Method.ProbabilityFlow(OdeMethod.FixedStep solver)
                    Schedule = Schedule.create grid steps eps }

/// A DPM-Solver configuration on a schedule.
let dpmSampling (settings: DpmSolverSettings) (schedule: Schedule) (finish: Finish) =
    { Method = Method.DpmSolver settings
      Schedule = schedule
      Finish = finish
      Observer = None
      Condition = None
      CheckFinite = true }

let private dpm (settings: DpmSolverSettings) (grid: TimeGrid) (finish: Finish) =
    fun (_: Sde) budget -> Some(dpmSampling settings (Schedule.create grid budget eps) finish)

/// The variations are about few-step sampling: run them up to 50 evaluations only (saves a third of the
/// benchmark's time; every solver has converged by then, see the table).
let private fewSteps (at: Sde -> int -> Sampling option) = fun sde budget -> if budget > 50 then None else at sde budget

/// EDM's grid (Karras et al. 2022) in the SDE's noise level sigma_t / alpha_t = exp(-lambda): levels
/// uniform in sigma^(1/rho) from T down to eps, mapped back to t. n intervals.
let edmGrid (rho: float) (sde: Sde) (n: int) (eps: float) : float[] =
    let sMax, sMin = Math.Exp(-(Sde.lambdaAt sde sde.T)), Math.Exp(-(Sde.lambdaAt sde eps))
    let a, b = Math.Pow(sMax, 1.0 / rho), Math.Pow(sMin, 1.0 / rho)
    let ts = Array.init (n + 1) (fun i -> Sde.timeOfLambda sde (-(Math.Log(Math.Pow(a + (b - a) * float i / float n, rho)))))
    ts.[0] <- sde.T
    ts.[n] <- eps
    ts

/// A DPM-Solver run on an EDM grid (the grid has as many intervals as the solver's evaluations).
let private dpmEdm (rho: float) (settings: DpmSolverSettings) =
    fun sde budget -> Some(dpmSampling settings (Schedule.ofTimes (edmGrid rho sde budget eps)) Finish.NoFinish)

/// The two algorithms, named explicitly (whatever the library's default).
let noisePrediction = { DpmSolver.defaults with Algorithm = DpmAlgorithm.DpmSolver; Order = 3 }
let dataPrediction = { noisePrediction with Algorithm = DpmAlgorithm.DpmSolverPlusPlus }
let private taylor = { noisePrediction with ThirdOrder = DpmThirdOrder.TaylorExact }
let private s3, m = DpmMethod.SingleStep, DpmMethod.MultiStep
let private logSnr, none = TimeGrid.LogSnr, Finish.NoFinish

/// Langevin with batch-averaged norms, as the paper's code (per-sample norms are biased in few
/// dimensions, see README).
let batchLangevin = Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean }

/// The predictor-corrector sampler of the item-4 checks (docs/sdes.md): reverse diffusion + Langevin
/// (batch-averaged norms) at snr 0.08 and 1000 steps. At the paper's CIFAR-10 snr of 0.16 the
/// unadjusted Langevin step is too large for the 16-D mixture's narrowest mode (std 0.05 beside modes
/// up to 0.5 that set the batch-averaged step): its stationary spread is about 5% too wide there
/// (docs/pc-1000-steps.md measures both).
let pcCheck = pcSampling Predictor.ReverseDiffusion (Corrector.langevin 0.08 1) 1000

/// Samplers run at every budget.
let fixedBudget: FixedBudget list =
    let dpmRow name settings = { Name = name; Family = "DPM"; At = dpm settings logSnr none }
    let tuned name at = { Name = name; Family = "tuned"; At = fewSteps at }
    [ // predictor-corrector samplers (Song et al. 2021)
      { Name = "PC reverse diffusion + Langevin"
        Family = "PC"
        At = pc Predictor.ReverseDiffusion batchLangevin 2 }
      { Name = "PC reverse diffusion"
        Family = "PC"
        At = pc Predictor.ReverseDiffusion Corrector.NoCorrector 1 }
      { Name = "PC Euler-Maruyama"
        Family = "PC"
        At = pc Predictor.EulerMaruyama Corrector.NoCorrector 1 }
      { Name = "PC ancestral sampling"
        Family = "PC"
        At = pc Predictor.AncestralSampling Corrector.NoCorrector 1 }
      // fixed-step probability-flow ODE
      { Name = "ODE Euler (uniform t)"; Family = "ODE"; At = ode OdeSolver.Euler TimeGrid.Uniform }
      { Name = "ODE Heun (uniform t)"; Family = "ODE"; At = ode OdeSolver.Heun TimeGrid.Uniform }
      { Name = "ODE RK4 (uniform t)"; Family = "ODE"; At = ode OdeSolver.Rk4 TimeGrid.Uniform }
      // DPM-Solver family on the logSNR grid
      dpmRow "DPM-Solver-1 = DDIM" { noisePrediction with Method = m; Order = 1 }
      dpmRow "DPM-Solver-2S" { noisePrediction with Method = s3; Order = 2 }
      dpmRow "DPM-Solver-3S" { noisePrediction with Method = s3; Order = 3 }
      dpmRow "DPM-Solver-2M" { noisePrediction with Method = m; Order = 2 }
      dpmRow "DPM-Solver-3M" { noisePrediction with Method = m; Order = 3 }
      dpmRow "DPM-Solver++2S" { dataPrediction with Method = s3; Order = 2 }
      dpmRow "DPM-Solver++3S" { dataPrediction with Method = s3; Order = 3 }
      dpmRow "DPM-Solver++2M" { dataPrediction with Method = m; Order = 2 }
      dpmRow "DPM-Solver++3M" { dataPrediction with Method = m; Order = 3 }
      // variations: grids, final steps, the third-order update, arithmetic, denoising
      tuned "DPM-Solver-3M, time-quadratic grid" (dpm noisePrediction TimeGrid.Quadratic none)
      tuned "DPM-Solver-2M, time-quadratic grid" (dpm { noisePrediction with Order = 2 } TimeGrid.Quadratic none)
      tuned "DPM-Solver-3M, EDM grid rho 7" (dpmEdm 7.0 noisePrediction)
      tuned "DPM-Solver-3M, lower-order final always" (dpm { noisePrediction with LowerOrderFinal = LowerOrderFinal.Always } logSnr none)
      tuned "DPM-Solver-3M, Taylor-exact" (dpm taylor logSnr none)
      tuned "DPM-Solver++3M, Taylor-exact" (dpm { dataPrediction with ThirdOrder = DpmThirdOrder.TaylorExact } logSnr none)
      tuned "DPM-Solver-3M, time-uniform grid" (dpm noisePrediction TimeGrid.Uniform none)
      tuned "DPM-Solver-3M, time-uniform grid, Taylor-exact" (dpm taylor TimeGrid.Uniform none)
      tuned "DPM-Solver++3M, time-uniform grid" (dpm dataPrediction TimeGrid.Uniform none)
      tuned
          "DPM-Solver++3M, time-uniform grid, Taylor-exact"
          (dpm { dataPrediction with ThirdOrder = DpmThirdOrder.TaylorExact } TimeGrid.Uniform none)
      tuned "DPM-Solver-3M, time-quadratic grid, Taylor-exact" (dpm taylor TimeGrid.Quadratic none)
      tuned
          "DPM-Solver++3M, time-quadratic grid, Taylor-exact"
          (dpm { dataPrediction with ThirdOrder = DpmThirdOrder.TaylorExact } TimeGrid.Quadratic none)
      tuned "DPM-Solver-3M, published float32 arithmetic" (dpm { noisePrediction with Arithmetic = DpmArithmetic.Published } logSnr none)
      tuned "DPM-Solver-3M, denoised" (dpm noisePrediction logSnr Finish.Tweedie)
      tuned "DPM-Solver++3M, time-quadratic grid" (dpm dataPrediction TimeGrid.Quadratic none)
      tuned "DPM-Solver++3S, time-quadratic grid" (dpm { dataPrediction with Method = s3 } TimeGrid.Quadratic none) ]

/// The converged ODE of the benchmark: DPM-Solver++3M at 1000 evaluations.
let converged = dpmSampling dataPrediction (Schedule.create logSnr 1000 eps) none

/// DPM-Solver-3M (noise prediction, multistep, order 3) with `steps` evaluations on a grid.
let dpmSolver3M (grid: TimeGrid) (steps: int) = dpmSampling noisePrediction (Schedule.create grid steps eps) none

/// DPM-Solver-3M with `steps` evaluations on the schedule measured best for each SDE at 20 evaluations
/// (docs/sdes.md; docs/dpm-solver-sweep-*.md): the time-quadratic grid for VP and sub-VP, and for VE
/// EDM's grid (rho 7) with lower orders in the last two steps. The library's logSNR grid spends a third
/// of its steps at sigma < 0.01 with sub-VP, whose lambda runs on to 9.1 at eps = 1e-3 (VP: 4.6).
let dpmFor (sde: Sde) (steps: int) =
    match sde with
    | Sde.Ve _ ->
        dpmSampling { noisePrediction with LowerOrderFinal = LowerOrderFinal.Always } (Schedule.ofTimes (edmGrid 7.0 sde steps eps)) none
    | _ -> dpmSolver3M TimeGrid.Quadratic steps

/// The adaptive probability flow (Dormand-Prince 5(4), one step size for the batch) at a tolerance.
let adaptiveFlow (tol: float) =
    { Sampling.flow with
        Method =
            Method.ProbabilityFlow(OdeMethod.Dopri5 { AdaptiveOde.defaults with Rtol = tol; Atol = tol; Control = StepControl.BatchGlobal }) }

/// Adaptive samplers, each at a few tolerances.
let adaptive: Adaptive list =
    [ for order in [ 2; 3 ] do
          for settings, algName in [ noisePrediction, "DPM-Solver"; dataPrediction, "DPM-Solver++" ] do
              for tol in [ 0.05; 0.01; 0.002 ] do
                  let a = { DpmSolver.adaptiveDefaults with Rtol = tol; Atol = tol }
                  yield
                      { Name = sprintf "adaptive %s-%d%d, rtol = atol = %g" algName (order - 1) order tol
                        Sampling =
                          dpmSampling { settings with Order = order; Method = DpmMethod.Adaptive a } (Schedule.create logSnr 20 eps) none }
      for tol in [ 1e-3; 1e-4; 1e-5 ] do
          yield { Name = sprintf "adaptive ODE Dopri5, rtol = atol = %g" tol; Sampling = adaptiveFlow tol } ]
