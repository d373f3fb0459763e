/// Every sampler of the library, as a function of an evaluation budget. Adding a sampler is one line in
/// `fixedBudget` (or `adaptive` for samplers that choose their own number of evaluations).
module ScoreSde.Quality.Samplers

open System
open TorchSharp
open ScoreSde

type Tensor = torch.Tensor

/// A sampler run at a requested number of model evaluations from the latent xT; None when the budget
/// is too small for the method (e.g. RK4 below 4 evaluations). A run may use fewer evaluations than
/// requested when its evaluations per step do not divide the budget (it reports what it used).
type FixedBudget = { Name: string; Family: string; Run: VpSde -> Model -> int -> Tensor -> SampleResult option }

/// A sampler that chooses its own number of evaluations (adaptive step size).
type Adaptive = { Name: string; Run: VpSde -> Model -> Tensor -> SampleResult }

/// Seed of the PC samplers' noise (fixed, so a run is reproducible).
let pcSeed = 2024L

let private pc (predictor: Predictor) (corrector: Corrector) (perStep: int) : VpSde -> Model -> int -> Tensor -> SampleResult option =
    fun sde model budget xT ->
        let steps = budget / perStep
        // the DDPM-type predictors need beta_i < 1: at least 2 steps
        if steps < 2 then
            None
        else
            let settings = { Sampler.pcDefaults with Predictor = predictor; Corrector = corrector; Steps = steps }
            Some(Sampler.predictorCorrector sde model settings (Noise.fromSeed pcSeed torch.CPU) xT)

let private ode (solver: OdeSolver) (grid: TimeGrid) : VpSde -> Model -> int -> Tensor -> SampleResult option =
    fun sde model budget xT ->
        let steps = budget / OdeSolver.evaluationsPerStep solver
        if steps < 1 then
            None
        else
            Some(Sampler.probabilityFlow sde model { Sampler.odeDefaults with Solver = solver; Grid = grid; Steps = steps } xT)

let private dpm (settings: DpmSolverSettings) : VpSde -> Model -> int -> Tensor -> SampleResult option =
    fun sde model budget xT -> Some(DpmSolver.sample sde model { settings with Steps = budget } xT)

/// The variations are about few-step sampling: run them up to 50 evaluations only (saves a third of the
/// benchmark's time; every solver has converged by then, see the table).
let private fewSteps (run: VpSde -> Model -> int -> Tensor -> SampleResult option) =
    fun sde model budget xT -> if budget > 50 then None else run sde model budget xT

/// EDM's grid (Karras et al. 2022) in the VP-SDE's noise level sigma_t / alpha_t = exp(-lambda):
/// levels uniform in sigma^(1/rho) from T down to eps, mapped back to t. n intervals.
let edmGrid (rho: float) (sde: VpSde) (n: int) (eps: float) : float[] =
    let sMax, sMin = Math.Exp(-(VpSde.lambdaAt sde sde.T)), Math.Exp(-(VpSde.lambdaAt sde eps))
    let a, b = Math.Pow(sMax, 1.0 / rho), Math.Pow(sMin, 1.0 / rho)
    let ts = Array.init (n + 1) (fun i -> VpSde.timeOfLambda sde (-(Math.Log(Math.Pow(a + (b - a) * float i / float n, rho)))))
    ts.[0] <- sde.T
    ts.[n] <- eps
    ts

/// A DPM-Solver run on an EDM grid (the grid has as many intervals as the solver's evaluations).
let private dpmEdm (rho: float) (settings: DpmSolverSettings) : VpSde -> Model -> int -> Tensor -> SampleResult option =
    fun sde model budget xT ->
        let n = budget - (if settings.Denoise then 1 else 0)
        Some(DpmSolver.sample sde model { settings with Grid = TimeGrid.Explicit(edmGrid rho sde n settings.Eps) } xT)

let private d = DpmSolver.defaults
let private noiseAlg = DpmAlgorithm.DpmSolver
let private dataAlg = DpmAlgorithm.DpmSolverPlusPlus
let private batchLangevin = Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean }

/// Samplers run at every budget.
let fixedBudget: FixedBudget list =
    [ // predictor-corrector samplers (Song et al. 2021); Langevin with batch-averaged norms, as the paper
      // code (per-sample norms are biased in few dimensions, see README)
      { Name = "PC reverse diffusion + Langevin"
        Family = "PC"
        Run = pc Predictor.ReverseDiffusion batchLangevin 2 }
      { Name = "PC reverse diffusion"
        Family = "PC"
        Run = pc Predictor.ReverseDiffusion Corrector.NoCorrector 1 }
      { Name = "PC Euler-Maruyama"
        Family = "PC"
        Run = pc Predictor.EulerMaruyama Corrector.NoCorrector 1 }
      { Name = "PC ancestral sampling"
        Family = "PC"
        Run = pc Predictor.AncestralSampling Corrector.NoCorrector 1 }
      // fixed-step probability-flow ODE
      { Name = "ODE Euler (uniform t)"; Family = "ODE"; Run = ode OdeSolver.Euler TimeGrid.Uniform }
      { Name = "ODE Heun (uniform t)"; Family = "ODE"; Run = ode OdeSolver.Heun TimeGrid.Uniform }
      { Name = "ODE RK4 (uniform t)"; Family = "ODE"; Run = ode OdeSolver.Rk4 TimeGrid.Uniform }
      // DPM-Solver family on the logSNR grid
      { Name = "DPM-Solver-1 = DDIM"
        Family = "DPM"
        Run = dpm { d with Algorithm = noiseAlg; Method = DpmMethod.MultiStep; Order = 1 } }
      { Name = "DPM-Solver-2S"
        Family = "DPM"
        Run = dpm { d with Algorithm = noiseAlg; Method = DpmMethod.SingleStep; Order = 2 } }
      { Name = "DPM-Solver-3S"
        Family = "DPM"
        Run = dpm { d with Algorithm = noiseAlg; Method = DpmMethod.SingleStep; Order = 3 } }
      { Name = "DPM-Solver-2M"
        Family = "DPM"
        Run = dpm { d with Algorithm = noiseAlg; Method = DpmMethod.MultiStep; Order = 2 } }
      { Name = "DPM-Solver-3M"
        Family = "DPM"
        Run = dpm { d with Algorithm = noiseAlg; Method = DpmMethod.MultiStep; Order = 3 } }
      { Name = "DPM-Solver++2S"
        Family = "DPM"
        Run = dpm { d with Algorithm = dataAlg; Method = DpmMethod.SingleStep; Order = 2 } }
      { Name = "DPM-Solver++3S"
        Family = "DPM"
        Run = dpm { d with Algorithm = dataAlg; Method = DpmMethod.SingleStep; Order = 3 } }
      { Name = "DPM-Solver++2M"
        Family = "DPM"
        Run = dpm { d with Algorithm = dataAlg; Method = DpmMethod.MultiStep; Order = 2 } }
      { Name = "DPM-Solver++3M"
        Family = "DPM"
        Run = dpm { d with Algorithm = dataAlg; Method = DpmMethod.MultiStep; Order = 3 } }
      // variations: grids, final steps, denoising
      { Name = "DPM-Solver-3M, time-quadratic grid"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; Grid = TimeGrid.Quadratic }) }
      { Name = "DPM-Solver-2M, time-quadratic grid"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; Order = 2; Grid = TimeGrid.Quadratic }) }
      { Name = "DPM-Solver-3M, EDM grid rho 7"
        Family = "tuned"
        Run = fewSteps (dpmEdm 7.0 { d with Algorithm = noiseAlg }) }
      { Name = "DPM-Solver-3M, lower-order final always"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; LowerOrderFinal = LowerOrderFinal.Always }) }
      { Name = "DPM-Solver-3M, Taylor-exact"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; ThirdOrder = DpmThirdOrder.TaylorExact }) }
      { Name = "DPM-Solver++3M, Taylor-exact"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = dataAlg; ThirdOrder = DpmThirdOrder.TaylorExact }) }
      { Name = "DPM-Solver-3M, time-uniform grid"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; Grid = TimeGrid.Uniform }) }
      { Name = "DPM-Solver-3M, time-uniform grid, Taylor-exact"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; Grid = TimeGrid.Uniform; ThirdOrder = DpmThirdOrder.TaylorExact }) }
      { Name = "DPM-Solver++3M, time-uniform grid"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = dataAlg; Grid = TimeGrid.Uniform }) }
      { Name = "DPM-Solver++3M, time-uniform grid, Taylor-exact"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = dataAlg; Grid = TimeGrid.Uniform; ThirdOrder = DpmThirdOrder.TaylorExact }) }
      { Name = "DPM-Solver-3M, time-quadratic grid, Taylor-exact"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; Grid = TimeGrid.Quadratic; ThirdOrder = DpmThirdOrder.TaylorExact }) }
      { Name = "DPM-Solver++3M, time-quadratic grid, Taylor-exact"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = dataAlg; Grid = TimeGrid.Quadratic; ThirdOrder = DpmThirdOrder.TaylorExact }) }
      { Name = "DPM-Solver-3M, published float32 arithmetic"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; Arithmetic = DpmArithmetic.Published }) }
      { Name = "DPM-Solver-3M, denoised"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = noiseAlg; Denoise = true }) }
      { Name = "DPM-Solver++3M, time-quadratic grid"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = dataAlg; Grid = TimeGrid.Quadratic }) }
      { Name = "DPM-Solver++3S, time-quadratic grid"
        Family = "tuned"
        Run = fewSteps (dpm { d with Algorithm = dataAlg; Method = DpmMethod.SingleStep; Grid = TimeGrid.Quadratic }) } ]

/// Adaptive samplers, each at a few tolerances.
let adaptive: Adaptive list =
    [ for order in [ 2; 3 ] do
          for alg, algName in [ noiseAlg, "DPM-Solver"; dataAlg, "DPM-Solver++" ] do
              for tol in [ 0.05; 0.01; 0.002 ] do
                  let a = { DpmSolver.adaptiveDefaults with Rtol = tol; Atol = tol }
                  yield
                      { Name = sprintf "adaptive %s-%d%d, rtol = atol = %g" algName (order - 1) order tol
                        Run =
                          fun sde model xT ->
                              DpmSolver.sample sde model { d with Algorithm = alg; Order = order; Method = DpmMethod.Adaptive a } xT }
      // the adaptive probability-flow ODE (Dormand-Prince 5(4), one step size for the batch)
      for tol in [ 1e-3; 1e-4; 1e-5 ] do
          let m = OdeMethod.Dopri5 { AdaptiveOde.defaults with Rtol = tol; Atol = tol; Control = StepControl.BatchGlobal }
          yield
              { Name = sprintf "adaptive ODE Dopri5, rtol = atol = %g" tol
                Run = fun sde model xT -> ProbabilityFlow.sample sde model { ProbabilityFlow.defaults with Method = m } xT } ]
