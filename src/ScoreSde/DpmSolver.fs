namespace ScoreSde

open System
open TorchSharp

/// Which model output the DPM solvers integrate exactly in their exponential-integrator form.
[<RequireQualifiedAccess>]
type DpmAlgorithm =
    /// DPM-Solver (Lu et al. 2022, arXiv 2206.00927): Taylor expansion of the noise prediction eps(x, t)
    /// in the half log-SNR lambda.
    | DpmSolver
    /// DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095): Taylor expansion of the data prediction x_0(x, t).
    | DpmSolverPlusPlus

/// A correction of the data prediction x_0 applied before DPM-Solver++ uses it. Meant for pixel data
/// in a known range; off by default.
[<RequireQualifiedAccess>]
type Thresholding =
    | NoThresholding
    /// Clamp x_0 to [-bound, bound].
    | Static of bound: float
    /// Imagen-style dynamic thresholding: per sample, s = max(the q-quantile of |x_0|, maxValue);
    /// x_0 <- clamp(x_0, -s, s) * maxValue / s (so with maxValue 1 the range becomes [-1, 1]).
    | Dynamic of quantile: float * maxValue: float

/// Settings of the adaptive DPM-Solver (Lu et al. 2022a, Sec. 3.3 and App. C): an order k - 1 and an
/// order k solution share their model evaluations; their difference, relative to
/// delta = max(Atol, Rtol max(|x_lower|, |x_prev|)), gives the error E (RMS over each sample's
/// elements, maximum over the batch). A step is accepted when E <= 1, and the next step in lambda is
/// h <- min(Safety h E^(-1/k), lambda_eps - lambda_s).
type DpmAdaptiveSettings =
    {
        Rtol: float
        Atol: float
        /// First step, in lambda.
        InitialStep: float
        /// Safety factor theta in (0, 1].
        Safety: float
        /// A run that would need more model evaluations than this stops with an error.
        MaxEvaluations: int
    }

/// How the DPM solvers step.
[<RequireQualifiedAccess>]
type DpmMethod =
    /// Single-step: an order-k step evaluates the model k times (at intermediate lambdas).
    | SingleStep
    /// Multistep: one evaluation per step; order k reuses the k - 1 previous evaluations.
    | MultiStep
    /// Adaptive step size in lambda (orders 2 and 3); the grid and the step budget are not used.
    | Adaptive of DpmAdaptiveSettings

/// When a multistep run lowers the orders of its final steps (the last step first order, the one
/// before it at most second), which the papers find stabilises very few steps.
[<RequireQualifiedAccess>]
type LowerOrderFinal =
    /// Full order to the end.
    | Never
    /// Whatever the number of steps.
    | Always
    /// Only when the run has fewer solver steps than this: dpm_solver_pytorch.py's rule is
    /// BelowSteps 10 (the default), diffusers' DPMSolverMultistepScheduler's BelowSteps 15.
    | BelowSteps of int

/// The multistep third-order update's second difference.
[<RequireQualifiedAccess>]
type DpmThirdOrder =
    /// dpm_solver_pytorch.py's update (the default): D2 = (D1_0 - D1_1) / (r0 + r1), which estimates
    /// h^2 m'' / 2 while the Taylor term is phi_3(H) h^2 m'': second order formally, and the better one
    /// at 10 to 20 evaluations (docs/dpm-solver.md).
    | Published
    /// D2 doubled so that the update matches the Taylor expansion: third order formally (measured 3 to 4
    /// on the Gaussian flow), better only with many steps. Not the published solver_type 'taylor', whose
    /// multistep third-order update equals 'dpmsolver''s.
    | TaylorExact

/// The arithmetic of the DPM solvers' time grid and step coefficients (the element-wise combinations
/// always run in the samples' dtype). The adaptive method always computes in float64, and so does every
/// run with a sub-VP or VE SDE (the published code has the linear VP schedule only).
[<RequireQualifiedAccess>]
type DpmArithmetic =
    /// dpm_solver_pytorch.py's: float32 operations in its order (sigma_t = sqrt(1 - exp(2 m)); the
    /// grid from float32 lambdas, ending at inverse_lambda(lambda(eps)) = 1.0005e-3 for eps = 1e-3;
    /// denoising at float32(eps)), whatever the samples' dtype, as the published code does.
    | Published
    /// float64 with sigma_t from expm1, grid ends at exactly T and eps.
    | Float64
    /// Published for float32 (and lower-precision) samples, Float64 for float64 samples (default):
    /// float32 runs reproduce the published sampler, float64 runs keep float64 accuracy.
    | PublishedForFloat32

/// Settings of the DPM solvers: the method's own choices. The time grid, the number of evaluations and
/// the end time come from the run's `Schedule`, Tweedie's denoising step from its `Finish`.
type DpmSolverSettings =
    {
        Algorithm: DpmAlgorithm
        Method: DpmMethod
        /// 1, 2 or 3 (2 or 3 for the adaptive method).
        Order: int
        /// Multistep: when to use lower orders in the final steps (order min(k, steps left)); the rule
        /// looks at the solver steps (the schedule's steps less the denoising evaluation). Single-step:
        /// the budget is split as the DPM-Solver paper does (`singleStepOrders`, ending in lower-order
        /// steps; the published 'singlestep') unless Never and the order divides the budget, when every
        /// step has the full order (the published 'singlestep_fixed').
        LowerOrderFinal: LowerOrderFinal
        /// Multistep order 3: the published second difference or the Taylor-exact (doubled) one.
        ThirdOrder: DpmThirdOrder
        /// How the time grid and the step coefficients are computed.
        Arithmetic: DpmArithmetic
        /// DPM-Solver++ only.
        Thresholding: Thresholding
    }

/// DPM-Solver and DPM-Solver++: exponential integrators of the probability-flow ODE in the half
/// log-SNR lambda = log(alpha / sigma). In terms of h = lambda_t - lambda_s (t < s) every step reads
///   x_t = r x_s - c [phi_1(H) m_s + phi_2(H) D_1 + phi_3(H) D_2 ...]
/// with m the model's noise prediction (DPM-Solver: r = alpha_t / alpha_s, c = sigma_t, H = h) or data
/// prediction (DPM-Solver++: r = sigma_t / sigma_s, c = alpha_t, H = -h), D_k the k-th finite
/// differences of m in lambda scaled by h^k, and phi_1(H) = e^H - 1, phi_(k+1)(H) = phi_k(H) / H - 1 / k!.
[<RequireQualifiedAccess>]
module DpmSolver =
    /// The paper's adaptive settings (tolerances for data in [-1, 1]): rtol 0.05, atol 0.0078,
    /// first step 0.05 in lambda, safety 0.9, at most 10,000 evaluations.
    let adaptiveDefaults = { Rtol = 0.05; Atol = 0.0078; InitialStep = 0.05; Safety = 0.9; MaxEvaluations = 10000 }

    /// Defaults, chosen by measurement (docs/dpm-solver.md): DPM-Solver (noise prediction) multistep
    /// order 3 with the published update, the published lower-order rule (BelowSteps 10), the
    /// published arithmetic for float32 samples, no thresholding (`Sampling.dpmSolver` adds 20
    /// evaluations on the logSNR grid to eps = 1e-3, no denoising). DPM-Solver++ is the better choice
    /// for guided sampling (large guidance scales) and with thresholding.
    let defaults =
        { Algorithm = DpmAlgorithm.DpmSolver
          Method = DpmMethod.MultiStep
          Order = 3
          LowerOrderFinal = LowerOrderFinal.BelowSteps 10
          ThirdOrder = DpmThirdOrder.Published
          Arithmetic = DpmArithmetic.PublishedForFloat32
          Thresholding = Thresholding.NoThresholding }

    /// Whether a multistep run of `solverSteps` steps lowers its final orders under the rule.
    let lowersFinalOrders (rule: LowerOrderFinal) (solverSteps: int) =
        match rule with
        | LowerOrderFinal.Never -> false
        | LowerOrderFinal.Always -> true
        | LowerOrderFinal.BelowSteps n -> solverSteps < n

    /// The VP schedule of a run that uses the published float32 arithmetic (a VP-SDE and samples of this
    /// dtype), else None (float64 arithmetic).
    let publishedSchedule (sde: Sde) (arithmetic: DpmArithmetic) (dtype: torch.ScalarType) =
        match sde, arithmetic with
        | Sde.Vp s, DpmArithmetic.Published -> Some s
        | Sde.Vp s, DpmArithmetic.PublishedForFloat32 when dtype <> torch.float64 -> Some s
        | _ -> None

    /// phi_k(H) for k = 1, 2, 3: phi_1 = expm1(H), phi_2 = phi_1 / H - 1, phi_3 = phi_2 / H - 1/2,
    /// i.e. phi_k(H) = sum_(j >= 1) H^j / (j + k - 1)!, with a power series for small |H|.
    let phi (k: int) (h: float) : float = DpmFloat64.phi k h

    /// Orders of the outer steps of a single-step run spending exactly `budget` evaluations, as the
    /// DPM-Solver paper splits it: order 3 takes [3; ...; 3; 2; 1] when budget = 0 mod 3, [3; ...; 3; 1]
    /// when 1 mod 3 and [3; ...; 3; 2] when 2 mod 3; order 2 takes [2; ...; 2] plus a final 1 when the
    /// budget is odd; order 1 takes budget first-order steps.
    let singleStepOrders (order: int) (budget: int) : int[] =
        if order < 1 || order > 3 then
            Check.fail "order" order "1, 2 or 3"
        Check.positiveInt "budget" budget
        match order with
        | 1 -> Array.create budget 1
        | 2 -> Array.append (Array.create (budget / 2) 2) (if budget % 2 = 1 then [| 1 |] else [||])
        | _ ->
            let k = budget / 3 + 1
            match budget % 3 with
            | 0 -> Array.concat [ Array.create (k - 2) 3; [| 2; 1 |] ]
            | 1 -> Array.append (Array.create (k - 1) 3) [| 1 |]
            | _ -> Array.append (Array.create (k - 1) 3) [| 2 |]

    /// Orders of the steps of an n-step multistep run: warm-up min(order, i + 1) at step i (0-based),
    /// and with `lowerOrderFinal` also at most n - i (the last step first order, the one before at most
    /// second).
    let multiStepOrders (order: int) (steps: int) (lowerOrderFinal: bool) : int[] =
        if order < 1 || order > 3 then
            Check.fail "order" order "1, 2 or 3"
        Check.positiveInt "steps" steps
        Array.init steps (fun i -> min order (min (i + 1) (if lowerOrderFinal then steps - i else order)))

    let private isExplicit (grid: TimeGrid) =
        match grid with
        | TimeGrid.Explicit _ -> true
        | _ -> false

    /// Validate settings with their schedule and finish (`denoise`: Tweedie's step spends one of the
    /// evaluations) against the SDE; every failure names the setting and its value.
    let validate (sde: Sde) (settings: DpmSolverSettings) (schedule: Schedule) (denoise: bool) =
        match settings.Method with
        | DpmMethod.Adaptive a ->
            if settings.Order <> 2 && settings.Order <> 3 then
                raise (
                    ArgumentOutOfRangeException(
                        "order",
                        settings.Order,
                        sprintf "order must be 2 or 3 for the adaptive DPM-Solver (got %d)." settings.Order
                    )
                )
            Check.finite "rtol" a.Rtol
            if a.Rtol < 0.0 then
                Check.fail "rtol" a.Rtol "zero or more"
            Check.finite "atol" a.Atol
            if a.Atol < 0.0 then
                Check.fail "atol" a.Atol "zero or more"
            if a.Rtol = 0.0 && a.Atol = 0.0 then
                Check.fail "atol" a.Atol "positive when rtol is 0"
            Check.positive "initialStep" a.InitialStep
            Check.positive "safety" a.Safety
            if a.Safety > 1.0 then
                Check.fail "safety" a.Safety "in (0, 1]"
            Check.positiveInt "maxEvaluations" a.MaxEvaluations
            if isExplicit schedule.Grid then
                Check.fail
                    "grid"
                    schedule.Grid
                    "a generated grid (the adaptive method chooses its own steps; an explicit grid contradicts it)"
            Schedule.checkEps sde schedule.Eps
        | DpmMethod.SingleStep
        | DpmMethod.MultiStep ->
            if settings.Order < 1 || settings.Order > 3 then
                raise (ArgumentOutOfRangeException("order", settings.Order, sprintf "order must be 1, 2 or 3 (got %d)." settings.Order))
            match schedule.Grid with
            | TimeGrid.Explicit ts -> TimeGrid.validate sde ts
            | _ ->
                Check.positiveInt "steps" schedule.Steps
                if denoise && schedule.Steps < 2 then
                    Check.fail "steps" schedule.Steps "at least 2 with Tweedie denoising (the last evaluation denoises)"
                Schedule.points sde schedule |> ignore
        match settings.Thresholding with
        | Thresholding.NoThresholding -> ()
        | _ when settings.Algorithm <> DpmAlgorithm.DpmSolverPlusPlus ->
            Check.fail
                "thresholding"
                settings.Thresholding
                "NoThresholding with DPM-Solver (it corrects the data prediction of DPM-Solver++)"
        | Thresholding.Static b -> Check.positive "thresholding.bound" b
        | Thresholding.Dynamic(q, m) ->
            Check.finite "thresholding.quantile" q
            if q <= 0.0 || q > 1.0 then
                Check.fail "thresholding.quantile" q "in (0, 1]"
            Check.positive "thresholding.maxValue" m
        match settings.LowerOrderFinal with
        | LowerOrderFinal.BelowSteps n -> Check.positiveInt "lowerOrderFinal.belowSteps" n
        | _ -> ()

    /// The solver's time points from T down to eps (without the denoising step): the step grid of a
    /// multistep run, the outer step grid of a single-step run (uniform in lambda for the logSNR grid
    /// and for full-order steps, otherwise the budget's grid taken at the cumulative step orders), and
    /// each outer step's order. `published` (a VP schedule) computes the grids as dpm_solver_pytorch.py
    /// does (`DpmArithmetic.Published`).
    let scheduleWith (published: VpSchedule option) (sde: Sde) (settings: DpmSolverSettings) (schedule: Schedule) (denoise: bool) =
        let solverSteps =
            match schedule.Grid with
            | TimeGrid.Explicit ts -> ts.Length - 1
            | _ -> schedule.Steps - (if denoise then 1 else 0)
        let grid n =
            match published with
            | Some vp -> DpmPublished.timeSteps vp schedule.Grid sde.T schedule.Eps n
            | None -> TimeGrid.points sde schedule.Grid n schedule.Eps
        match settings.Method with
        | DpmMethod.MultiStep ->
            grid solverSteps, multiStepOrders settings.Order solverSteps (lowersFinalOrders settings.LowerOrderFinal solverSteps)
        | DpmMethod.SingleStep ->
            let fixedOrder = settings.LowerOrderFinal = LowerOrderFinal.Never && solverSteps % settings.Order = 0
            let orders =
                if fixedOrder then
                    Array.create (solverSteps / settings.Order) settings.Order
                else
                    singleStepOrders settings.Order solverSteps
            let times =
                match schedule.Grid with
                | TimeGrid.LogSnr -> grid orders.Length
                | TimeGrid.Uniform
                | TimeGrid.Quadratic when fixedOrder -> grid orders.Length
                | _ ->
                    let fine = grid solverSteps
                    Array.scan (+) 0 orders |> Array.map (fun i -> fine.[i])
            times, orders
        | DpmMethod.Adaptive _ -> invalidArg "settings" "the adaptive method has no fixed schedule"

    /// `scheduleWith` in float64 arithmetic.
    let schedule (sde: Sde) (settings: DpmSolverSettings) (schedule: Schedule) (denoise: bool) : float[] * int[] =
        scheduleWith None sde settings schedule denoise
