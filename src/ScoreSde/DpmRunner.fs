namespace ScoreSde

open System
open TorchSharp

/// The DPM solvers' runner: the model converted to the algorithm's prediction, the fused combinations,
/// and the fixed-step (multistep and single-step) and adaptive loops over the step formulas of
/// `DpmFloat64` and `DpmPublished` (DpmCoefficients.fs) and the settings and schedule of `DpmSolver`.
[<RequireQualifiedAccess>]
module internal DpmRunner =
    /// Per-run state: the model converted to the algorithm's prediction, a reusable time buffer and the
    /// evaluation count. `published` selects the published float32 arithmetic for the conversion.
    type private Run(sde: Sde, model: Model, algorithm: DpmAlgorithm, thresholding: Thresholding, published: VpSchedule option, x: Tensor) =
        let tb = torch.empty ([| x.shape.[0] |], dtype = x.dtype, device = x.device)
        let dataPrediction = algorithm = DpmAlgorithm.DpmSolverPlusPlus

        /// (a, b) with the prediction (data if `data`, else noise) = a x + b out at time t.
        let conversion (data: bool) (t: float) =
            match published with
            | Some vp -> DpmPublished.predictionCoefficients vp model.Output data t
            | None when data -> Model.dataCoefficientsAt sde model.Output t
            | None -> Model.noiseCoefficientsAt sde model.Output t

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

    let private lambdaOf (sde: Sde) t = Sde.lambdaAt sde t

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

    let private runFixed sde (settings: DpmSolverSettings) schedule denoise (afterStep: Observer) (run: Run) (x: Tensor) =
        let published = run.Published
        let dataPrediction = settings.Algorithm = DpmAlgorithm.DpmSolverPlusPlus
        let ts, orders = DpmSolver.scheduleWith published sde settings schedule denoise
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
                        match published with
                        | Some vp -> DpmPublished.multiStep vp dataPrediction k d2Factor (Array.init k (fun j -> ts.[i - j])) ts.[i + 1]
                        | None ->
                            let r, c, hh = run.Coefficients(ts.[i], ts.[i + 1], lambdas.[i], lambdas.[i + 1])
                            let h = lambdas.[i + 1] - lambdas.[i]
                            let h0 = if i >= 1 then lambdas.[i] - lambdas.[i - 1] else 0.0
                            let h1 = if i >= 2 then lambdas.[i - 1] - lambdas.[i - 2] else 0.0
                            let w = DpmFloat64.multiStepWeights k d2Factor hh h h0 h1
                            r, Array.init k (fun j -> -c * w.[j])
                    combineInto x x a [ for j in 0 .. k - 1 -> ws.[j], newest j ]
                    afterStep i ts.[i + 1] x
            finally
                for m in slots do
                    m.Dispose()
        | _ ->
            use u = torch.empty_like (x)
            for i in 0 .. orders.Length - 1 do
                let s, t, k = ts.[i], ts.[i + 1], orders.[i]
                use ms = run.Predict(x, s)
                let plan =
                    match published with
                    | Some vp ->
                        let r1, r2 = DpmPublished.fractions vp schedule.Grid k s t
                        DpmPublished.singleStep vp dataPrediction k r1 r2 s t
                    | None ->
                        let r1, r2 = DpmFloat64.fractions sde schedule.Grid k s t
                        DpmFloat64.singleStep sde dataPrediction k r1 r2 s t
                singleStep run k plan x ms u None
                afterStep i t x
        ts.[ts.Length - 1]

    let private runAdaptive
        sde
        (settings: DpmSolverSettings)
        (a: DpmAdaptiveSettings)
        (eps: float)
        (afterStep: Observer)
        (run: Run)
        (x: Tensor)
        =
        let order = settings.Order
        let r1, r2 = if order = 2 then 0.5, 0.0 else 1.0 / 3.0, 2.0 / 3.0
        let lEnd = lambdaOf sde eps
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
                let t = if last then eps else Sde.timeOfLambda sde lt
                if isNull ms then
                    ms <- run.Predict(x, s)
                if run.Nfe + order - 1 > a.MaxEvaluations then
                    raise (
                        InvalidOperationException(
                            sprintf
                                "The adaptive DPM-Solver needs more than maxEvaluations = %d model evaluations (reached t = %g of eps = %g); loosen rtol/atol or raise maxEvaluations."
                                a.MaxEvaluations
                                s
                                eps
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
                    let rms = (Tensors.square e).mean([| 1L |]).sqrt()
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
                    afterStep accepted t x
                    accepted <- accepted + 1
                let grow = if err = 0.0 then Double.PositiveInfinity else a.Safety * h * Math.Pow(err, -1.0 / float order)
                h <- min grow (lEnd - ls)
        finally
            if not (isNull ms) then
                ms.Dispose()
        eps

    /// Run DPM-Solver or DPM-Solver++ in place on x, the sampler's working copy (`Sampler.sample` calls this),
    /// without gradients: the fixed-step methods spend exactly the schedule's steps in model evaluations
    /// (one of them on Tweedie's denoising step when `denoise`), the adaptive method what it needs.
    /// `afterStep` runs after every (accepted) step. Returns the evaluations. The settings must have
    /// passed `DpmSolver.validate` (as `Sampling.validate` does; `run` checks them itself).
    let internal runValidated
        (sde: Sde)
        (model: Model)
        (settings: DpmSolverSettings)
        (schedule: Schedule)
        (denoise: bool)
        (afterStep: Observer)
        (x: Tensor)
        =
        use _noGrad = torch.no_grad ()
        // the adaptive method, and every SDE but VP, compute in float64 (see `DpmArithmetic`)
        let published =
            match settings.Method with
            | DpmMethod.Adaptive _ -> None
            | _ -> DpmSolver.publishedSchedule sde settings.Arithmetic x.dtype
        use run = new Run(sde, model, settings.Algorithm, settings.Thresholding, published, x)
        let tEnd =
            match settings.Method with
            | DpmMethod.Adaptive a -> runAdaptive sde settings a schedule.Eps afterStep run x
            | _ -> runFixed sde settings schedule denoise afterStep run x
        if denoise then
            // the published denoise_to_zero evaluates at float32(eps), not at the grid's last time
            run.DenoiseInPlace(x, (if published.IsSome then DpmPublished.f32 schedule.Eps else tEnd))
        run.Nfe

    /// `runValidated` after `DpmSolver.validate` (ArgumentException naming the bad setting).
    let run (sde: Sde) (model: Model) (settings: DpmSolverSettings) (schedule: Schedule) (denoise: bool) (afterStep: Observer) (x: Tensor) =
        DpmSolver.validate sde settings schedule denoise
        runValidated sde model settings schedule denoise afterStep x
