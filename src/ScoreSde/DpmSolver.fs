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
/// always run in the samples' dtype). The adaptive method always computes in float64.
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

/// Settings of the DPM solvers.
type DpmSolverSettings =
    {
        Algorithm: DpmAlgorithm
        Method: DpmMethod
        /// 1, 2 or 3 (2 or 3 for the adaptive method).
        Order: int
        /// Time grid from T down to Eps. An explicit grid fixes the solver's evaluations itself: one per
        /// interval (plus one for Denoise).
        Grid: TimeGrid
        /// The number of model evaluations, met exactly (fixed-step methods).
        Steps: int
        Eps: float
        /// Multistep: when to use lower orders in the final steps (order min(k, steps left)); the rule
        /// looks at the solver steps (Steps less the denoising evaluation). Single-step: the budget is
        /// split as the DPM-Solver paper does (`singleStepOrders`, ending in lower-order steps; the
        /// published 'singlestep') unless Never and the order divides the budget, when every step has
        /// the full order (the published 'singlestep_fixed').
        LowerOrderFinal: LowerOrderFinal
        /// Multistep order 3: the published second difference or the Taylor-exact (doubled) one.
        ThirdOrder: DpmThirdOrder
        /// How the time grid and the step coefficients are computed.
        Arithmetic: DpmArithmetic
        /// Spend the last evaluation on Tweedie's denoising step x_0 = E[x_0 | x_eps] (counts in Steps).
        Denoise: bool
        /// DPM-Solver++ only.
        Thresholding: Thresholding
        Observer: Observer option
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
    /// order 3 with the published update, 20 evaluations on the logSNR grid to eps = 1e-3, the
    /// published lower-order rule (BelowSteps 10), the published arithmetic for float32 samples, no
    /// denoising, no thresholding. DPM-Solver++ is the better choice for guided sampling (large
    /// guidance scales) and with thresholding.
    let defaults =
        { Algorithm = DpmAlgorithm.DpmSolver
          Method = DpmMethod.MultiStep
          Order = 3
          Grid = TimeGrid.LogSnr
          Steps = 20
          Eps = 1e-3
          LowerOrderFinal = LowerOrderFinal.BelowSteps 10
          ThirdOrder = DpmThirdOrder.Published
          Arithmetic = DpmArithmetic.PublishedForFloat32
          Denoise = false
          Thresholding = Thresholding.NoThresholding
          Observer = None }

    /// Whether a multistep run of `solverSteps` steps lowers its final orders under the rule.
    let lowersFinalOrders (rule: LowerOrderFinal) (solverSteps: int) =
        match rule with
        | LowerOrderFinal.Never -> false
        | LowerOrderFinal.Always -> true
        | LowerOrderFinal.BelowSteps n -> solverSteps < n

    /// Whether a run on samples of this dtype uses the published float32 arithmetic.
    let usesPublishedArithmetic (arithmetic: DpmArithmetic) (dtype: torch.ScalarType) =
        match arithmetic with
        | DpmArithmetic.Published -> true
        | DpmArithmetic.Float64 -> false
        | DpmArithmetic.PublishedForFloat32 -> dtype <> torch.float64

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

    /// Validate settings against the SDE; every failure names the setting and its value.
    let validate (sde: VpSde) (settings: DpmSolverSettings) =
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
            if isExplicit settings.Grid then
                Check.fail
                    "grid"
                    settings.Grid
                    "a generated grid (the adaptive method chooses its own steps; an explicit grid contradicts it)"
            Check.finite "eps" settings.Eps
            if settings.Eps <= 0.0 || settings.Eps >= sde.T then
                Check.fail "eps" settings.Eps (sprintf "in (0, %g)" sde.T)
        | DpmMethod.SingleStep
        | DpmMethod.MultiStep ->
            if settings.Order < 1 || settings.Order > 3 then
                raise (ArgumentOutOfRangeException("order", settings.Order, sprintf "order must be 1, 2 or 3 (got %d)." settings.Order))
            match settings.Grid with
            | TimeGrid.Explicit ts -> TimeGrid.validate sde ts
            | _ ->
                Check.positiveInt "steps" settings.Steps
                if settings.Denoise && settings.Steps < 2 then
                    Check.fail "steps" settings.Steps "at least 2 with Denoise (the last evaluation denoises)"
                TimeGrid.points sde settings.Grid settings.Steps settings.Eps |> ignore
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
    /// each outer step's order. `published` computes the grids as dpm_solver_pytorch.py does
    /// (`DpmArithmetic.Published`).
    let scheduleWith (published: bool) (sde: VpSde) (settings: DpmSolverSettings) : float[] * int[] =
        let solverSteps =
            match settings.Grid with
            | TimeGrid.Explicit ts -> ts.Length - 1
            | _ -> settings.Steps - (if settings.Denoise then 1 else 0)
        let grid n =
            if published then
                DpmPublished.timeSteps sde settings.Grid sde.T settings.Eps n
            else
                TimeGrid.points sde settings.Grid n settings.Eps
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
                match settings.Grid with
                | TimeGrid.LogSnr -> grid orders.Length
                | TimeGrid.Uniform
                | TimeGrid.Quadratic when fixedOrder -> grid orders.Length
                | _ ->
                    let fine = grid solverSteps
                    Array.scan (+) 0 orders |> Array.map (fun i -> fine.[i])
            times, orders
        | DpmMethod.Adaptive _ -> invalidArg "settings" "the adaptive method has no fixed schedule"

    /// `scheduleWith` in float64 arithmetic.
    let schedule (sde: VpSde) (settings: DpmSolverSettings) : float[] * int[] = scheduleWith false sde settings

    /// Per-run state: the model converted to the algorithm's prediction, a reusable time buffer and the
    /// evaluation count. `published` selects the published float32 arithmetic for the conversion.
    type private Run(sde: VpSde, model: Model, algorithm: DpmAlgorithm, thresholding: Thresholding, published: bool, x: Tensor) =
        let tb = torch.empty ([| x.shape.[0] |], dtype = x.dtype, device = x.device)
        let dataPrediction = algorithm = DpmAlgorithm.DpmSolverPlusPlus

        /// (a, b) with the prediction (data if `data`, else noise) = a x + b out at time t.
        let conversion (data: bool) (t: float) =
            if published then DpmPublished.predictionCoefficients sde model.Output data t
            elif data then Model.dataCoefficientsAt sde model.Output t
            else Model.noiseCoefficientsAt sde model.Output t

        member val Nfe = 0 with get, set
        member _.Published = published

        /// Clip a data prediction in place as the thresholding setting asks.
        member private _.Threshold(d: Tensor) =
            match thresholding with
            | Thresholding.NoThresholding -> ()
            | Thresholding.Static b ->
                use lo = Tensors.scalar -b
                use hi = Tensors.scalar b
                d.clamp_ (lo, hi) |> ignore
            | Thresholding.Dynamic(q, maxValue) ->
                use scope = torch.NewDisposeScope()
                let flat = d.abs().reshape([| d.shape.[0]; -1L |])
                let qs = flat.quantile (torch.tensor (q, dtype = flat.dtype, device = flat.device), 1L, true)
                use mv = Tensors.scalar maxValue
                let s = qs.clamp_min (mv)
                let shape = Array.init (int (d.dim ())) (fun i -> if i = 0 then d.shape.[0] else 1L)
                let s = s.reshape (shape)
                let lo = s.neg ()
                d.copy_ (torch.minimum(torch.maximum (d, lo), s).mul_(mv).div_(s)) |> ignore

        /// The prediction m(x, t) as a fresh tensor.
        member this.Predict(x: Tensor, t: float) : Tensor =
            Tensors.fillHost tb t
            this.Nfe <- this.Nfe + 1
            let d =
                use scope = torch.NewDisposeScope()
                let out = Model.eval model x tb
                let a, b = conversion dataPrediction t
                (Kernel.combine a x b out).MoveToOuterDisposeScope()
            if dataPrediction then
                this.Threshold d
            d

        /// Tweedie's denoising step x <- x_0(x, t), in place (thresholded like DPM-Solver++'s data
        /// predictions, as the published denoise_to_zero_fn does).
        member this.DenoiseInPlace(x: Tensor, t: float) =
            Tensors.fillHost tb t
            this.Nfe <- this.Nfe + 1
            use scope = torch.NewDisposeScope()
            let out = Model.eval model x tb
            let a, b = conversion true t
            Kernel.axpby x a out b
            this.Threshold x

        /// The prediction m(x, t) written into dst (a buffer shaped like x, not x itself): the model's
        /// output converted with host coefficients, one pass on CPU tensors. No tensor is created
        /// besides the model's own (and dynamic thresholding's temporaries).
        member this.PredictInto(x: Tensor, t: float, dst: Tensor) =
            Tensors.fillHost tb t
            this.Nfe <- this.Nfe + 1
            use scope = torch.NewDisposeScope()
            let out = Model.eval model x tb
            let a, b = conversion dataPrediction t
            if a = 0.0 then
                dst.copy_ (out) |> ignore
                if b <> 1.0 then
                    Kernel.scale dst b
            elif not (Fused.tryLinear dst a x b out 0.0 null) then
                dst.copy_ (x) |> ignore
                Kernel.axpby dst a out b
            if dataPrediction then
                this.Threshold dst

        /// (r, c, H) of the step from s to t: x_t = r x_s - c [phi_1(H) m_s + ...].
        member _.Coefficients(s: float, t: float, ls: float, lt: float) = DpmFloat64.stepCoefficients sde dataPrediction s t ls lt

        interface IDisposable with
            member _.Dispose() = tb.Dispose()

    /// target <- r x + sum_i c_i m_i, in place (target may be x itself; the m_i are neither): the
    /// first two terms in one fused pass on CPU tensors (`Fused`), else a scale and one add per term.
    let private combineInto (target: Tensor) (x: Tensor) (r: float) (terms: (float * Tensor) list) =
        let terms = terms |> List.filter (fun (c, _) -> c <> 0.0)
        let addEach (rest: (float * Tensor) list) =
            for c, m in rest do
                use cs = Tensors.scalar c
                target.add_ (m, cs) |> ignore
        let fused, rest =
            match terms with
            | [] -> false, []
            | [ c0, m0 ] -> Fused.tryLinear target r x c0 m0 0.0 null, []
            | (c0, m0) :: (c1, m1) :: rest -> Fused.tryLinear target r x c0 m0 c1 m1, rest
        if fused then
            addEach rest
        else
            if not (Object.ReferenceEquals(target, x)) then
                target.copy_ (x) |> ignore
            use rs = Tensors.scalar r
            target.mul_ (rs) |> ignore
            addEach terms

    let private lambdaOf (sde: VpSde) t = VpSde.lambdaAt sde t

    // ---- single-step (DPM-Solver-k of the first paper; the "DPM-Solver" variant of the second) ----

    /// One single-step update of order k (1 to 3) with the given coefficients, in place on x. ms is the
    /// prediction at (x, s) (owned by the caller); u is a scratch buffer. When `lower` is given it
    /// receives the order k - 1 solution that shares the evaluations (orders 2 and 3 only).
    let private singleStep (run: Run) (order: int) (p: SingleStepPlan) (x: Tensor) (ms: Tensor) (u: Tensor) (lower: Tensor option) =
        match order with
        | 1 -> combineInto x x p.A [ p.Ws, ms ]
        | 2 ->
            combineInto u x p.U1a [ p.U1s, ms ]
            use m1 = run.Predict(u, p.S1)
            lower |> Option.iter (fun lo -> combineInto lo x p.LowerA [ p.LowerS, ms ])
            combineInto x x p.A [ p.Ws, ms; p.W1, m1 ]
        | _ ->
            combineInto u x p.U1a [ p.U1s, ms ]
            use m1 = run.Predict(u, p.S1)
            combineInto u x p.U2a [ p.U2s, ms; p.U21, m1 ]
            use m2 = run.Predict(u, p.S2)
            lower |> Option.iter (fun lo -> combineInto lo x p.LowerA [ p.LowerS, ms; p.Lower1, m1 ])
            combineInto x x p.A [ p.Ws, ms; p.W2, m2 ]

    // ---- multistep (the second paper's multistep DPM-Solver(++)-2M and -3M) ----

    // ---- entry points ----

    let private runFixed (sde: VpSde) (settings: DpmSolverSettings) (run: Run) (x: Tensor) =
        let published = run.Published
        let dataPrediction = settings.Algorithm = DpmAlgorithm.DpmSolverPlusPlus
        let ts, orders = scheduleWith published sde settings
        match settings.Method with
        | DpmMethod.MultiStep ->
            let lambdas = ts |> Array.map (lambdaOf sde)
            let d2Factor =
                match settings.ThirdOrder with
                | DpmThirdOrder.Published -> 1.0
                | DpmThirdOrder.TaylorExact -> 2.0
            // A ring of preallocated prediction buffers, one per order: step i writes slot i mod n, and
            // the j-th newest prediction is slot (i - j) mod n. Nothing is allocated per step.
            let n = settings.Order
            let slots = Array.init n (fun _ -> torch.empty_like (x))
            try
                for i in 0 .. orders.Length - 1 do
                    run.PredictInto(x, ts.[i], slots.[i % n])
                    let newest j = slots.[(i - j + n * 3) % n]
                    let k = orders.[i]
                    let a, ws =
                        if published then
                            DpmPublished.multiStep sde dataPrediction k d2Factor (Array.init k (fun j -> ts.[i - j])) ts.[i + 1]
                        else
                            let r, c, hh = run.Coefficients(ts.[i], ts.[i + 1], lambdas.[i], lambdas.[i + 1])
                            let h = lambdas.[i + 1] - lambdas.[i]
                            let h0 = if i >= 1 then lambdas.[i] - lambdas.[i - 1] else 0.0
                            let h1 = if i >= 2 then lambdas.[i - 1] - lambdas.[i - 2] else 0.0
                            let w = DpmFloat64.multiStepWeights k d2Factor hh h h0 h1
                            r, Array.init k (fun j -> -c * w.[j])
                    combineInto x x a [ for j in 0 .. k - 1 -> ws.[j], newest j ]
                    settings.Observer |> Option.iter (fun f -> f i ts.[i + 1] x)
            finally
                for m in slots do
                    m.Dispose()
        | _ ->
            use u = torch.empty_like (x)
            for i in 0 .. orders.Length - 1 do
                let s, t, k = ts.[i], ts.[i + 1], orders.[i]
                use ms = run.Predict(x, s)
                let plan =
                    if published then
                        let r1, r2 = DpmPublished.fractions sde settings.Grid k s t
                        DpmPublished.singleStep sde dataPrediction k r1 r2 s t
                    else
                        let r1, r2 = DpmFloat64.fractions sde settings.Grid k s t
                        DpmFloat64.singleStep sde dataPrediction k r1 r2 s t
                singleStep run k plan x ms u None
                settings.Observer |> Option.iter (fun f -> f i t x)
        ts.[ts.Length - 1]

    let private runAdaptive (sde: VpSde) (settings: DpmSolverSettings) (a: DpmAdaptiveSettings) (run: Run) (x: Tensor) =
        let order = settings.Order
        let r1, r2 = if order = 2 then 0.5, 0.0 else 1.0 / 3.0, 2.0 / 3.0
        let lEnd = lambdaOf sde settings.Eps
        let mutable s = sde.T
        let mutable ls = lambdaOf sde s
        let mutable h = a.InitialStep
        use u = torch.empty_like (x)
        use lower = torch.empty_like (x)
        use higher = torch.empty_like (x)
        use xPrev = x.clone ()
        let mutable ms: Tensor = null
        let mutable accepted = 0
        try
            while ls < lEnd do
                let last = h >= lEnd - ls
                let lt = if last then lEnd else ls + h
                let t = if last then settings.Eps else VpSde.timeOfLambda sde lt
                if isNull ms then
                    ms <- run.Predict(x, s)
                if run.Nfe + order - 1 > a.MaxEvaluations then
                    raise (
                        InvalidOperationException(
                            sprintf
                                "The adaptive DPM-Solver needs more than maxEvaluations = %d model evaluations (reached t = %g of eps = %g); loosen rtol/atol or raise maxEvaluations."
                                a.MaxEvaluations
                                s
                                settings.Eps
                        )
                    )
                higher.copy_ (x) |> ignore
                singleStep
                    run
                    order
                    (DpmFloat64.singleStep sde (settings.Algorithm = DpmAlgorithm.DpmSolverPlusPlus) order r1 r2 s t)
                    higher
                    ms
                    u
                    (Some lower)
                let err =
                    use scope = torch.NewDisposeScope()
                    use rtol = Tensors.scalar a.Rtol
                    use atol = Tensors.scalar a.Atol
                    let delta = torch.maximum(lower.abs (), xPrev.abs ()).mul_(rtol).clamp_min_(atol)
                    let e = (higher - lower).div_(delta).reshape([| x.shape.[0]; -1L |])
                    let rms = e.square().mean([| 1L |]).sqrt()
                    (rms.max().to_type(torch.float64)).item<float>()
                if Double.IsNaN err || Double.IsInfinity err then
                    raise (
                        InvalidOperationException(
                            sprintf "The adaptive DPM-Solver's error estimate is %g at t = %g: the model returned non-finite values." err s
                        )
                    )
                if err <= 1.0 then
                    x.copy_ (higher) |> ignore
                    xPrev.copy_ (lower) |> ignore
                    ms.Dispose()
                    ms <- null
                    s <- t
                    ls <- lt
                    settings.Observer |> Option.iter (fun f -> f accepted t x)
                    accepted <- accepted + 1
                let grow = if err = 0.0 then Double.PositiveInfinity else a.Safety * h * Math.Pow(err, -1.0 / float order)
                h <- min grow (lEnd - ls)
        finally
            if not (isNull ms) then
                ms.Dispose()
        settings.Eps

    /// Sample with DPM-Solver or DPM-Solver++ from the starting state xT (not modified), e.g. a
    /// draw from the prior N(0, I) (`Sampler.prior`). Runs without gradients. The fixed-step methods use
    /// exactly `settings.Steps` model evaluations (see `DpmSolverSettings.Grid` for explicit grids);
    /// the adaptive method reports what it used.
    let sample (sde: VpSde) (model: Model) (settings: DpmSolverSettings) (xT: Tensor) : SampleResult =
        Native.ensureLoaded ()
        Check.floating "xT" xT
        if xT.dim () < 1L || xT.shape.[0] < 1L then
            Check.fail "xT" xT.shape "a tensor with a batch dimension"
        validate sde settings
        use _noGrad = torch.no_grad ()
        let x = xT.clone ()
        try
            // the adaptive method always computes in float64 (see `DpmArithmetic`)
            let published =
                match settings.Method with
                | DpmMethod.Adaptive _ -> false
                | _ -> usesPublishedArithmetic settings.Arithmetic x.dtype
            use run = new Run(sde, model, settings.Algorithm, settings.Thresholding, published, x)
            let tEnd =
                match settings.Method with
                | DpmMethod.Adaptive a -> runAdaptive sde settings a run x
                | _ -> runFixed sde settings run x
            if settings.Denoise then
                // the published denoise_to_zero evaluates at float32(eps), not at the grid's last time
                run.DenoiseInPlace(x, (if published then DpmPublished.f32 settings.Eps else tEnd))
            { Samples = x; Nfe = run.Nfe }
        with _ ->
            x.Dispose()
            reraise ()
