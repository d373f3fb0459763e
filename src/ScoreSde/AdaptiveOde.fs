namespace ScoreSde

open System
open TorchSharp

/// A vector field dx/dt = F(x, t) with one time per batch element: t is a [B] tensor in x's dtype
/// and device. It returns a fresh tensor shaped like x and must not modify x or t.
type TimeField = Tensor -> Tensor -> Tensor

/// A vector field that writes f(y, t) into its third argument, a buffer shaped like y (y is not
/// modified; t holds one time per sample). Whatever else it creates is disposed after each call.
/// The solver's own form: a field that can write in place saves the state-sized result tensor
/// a `TimeField` returns.
type TimeFieldInto = Tensor -> Tensor -> Tensor -> unit

/// Whose error the adaptive step-size controller bounds.
[<RequireQualifiedAccess>]
type StepControl =
    /// Every batch element has its own time, step size and accept/reject decision, from the RMS error
    /// norm over its own components: a stiff sample takes small steps without shrinking the others'.
    /// All samples still go through every batched evaluation; a sample that has reached the end
    /// waits there (its step is zero) until the slowest one arrives.
    | PerSample
    /// One time and step size for the whole batch, from the RMS error norm over every component of
    /// the batch (what a black-box solver applied to the flattened batch does, as in the paper's code).
    | BatchGlobal

/// Called after every attempted step with the step index (0-based), the per-sample times [B] and the
/// state. Both tensors are the solver's working buffers: read (or clone) them, never modify or keep them.
type AdaptiveObserver = int -> Tensor -> Tensor -> unit

/// Settings of the adaptive Dormand-Prince 5(4) solver.
type AdaptiveSettings =
    {
        /// Relative tolerance (> 0).
        Rtol: float
        /// Absolute tolerance (> 0).
        Atol: float
        Control: StepControl
        /// The first step size; None for the automatic choice (Hairer, Norsett & Wanner's estimate,
        /// one extra evaluation).
        InitialStep: float option
        /// Smallest step size the controller may ask for; a smaller request is an error (the problem
        /// is too stiff for the tolerance, or the field is not finite). Independently, a step below ten
        /// rounding units of t is always an error.
        MinStep: float option
        /// Largest step size.
        MaxStep: float option
        /// Most attempted steps (accepted or rejected) before giving up with an error.
        MaxSteps: int
        /// Safety factor on the optimal step-size update (0.9).
        Safety: float
        /// Smallest step-size factor per step (0.2).
        MinFactor: float
        /// Largest step-size factor per step (10).
        MaxFactor: float
        /// Proportional-integral control (Gustafsson; Hairer, Norsett & Wanner's DOPRI5 uses 0.04): an
        /// accepted step's factor is Safety err^(-(1/5 - 0.75 PiBeta)) errPrev^PiBeta, damping the
        /// grow-reject oscillation of the plain controller. 0 gives the plain controller
        /// Safety err^(-1/5) of REFERENCE.md (what scipy's RK45 does).
        PiBeta: float
        Observer: AdaptiveObserver option
    }

/// The end state of an adaptive integration and its cost.
type AdaptiveResult =
    {
        /// The state at the end time (a fresh tensor; the caller owns it).
        State: Tensor
        /// Evaluations of the vector field (each one a batched call).
        Nfe: int
        /// Attempted steps (loop iterations; each costs 6 evaluations).
        Steps: int
        /// Accepted steps per sample.
        Accepted: int[]
        /// Rejected steps per sample.
        Rejected: int[]
    }

/// Adaptive explicit Runge-Kutta integration: the Dormand-Prince 5(4) pair with FSAL, local
/// extrapolation (the order-5 solution advances), the RMS error norm of REFERENCE.md,
/// err = RMS(e_i / (atol + rtol max(|y_i|, |y_new_i|))), accept when err <= 1, and the next step
/// h min(MaxFactor, max(MinFactor, Safety err^(-1/5))) (capped at 1 right after a rejection).
///
/// Everything runs batched on the state's device. Per step the host reads one two-element boolean
/// tensor (is any sample still running; has any step size fallen below its floor); the state itself
/// never leaves the device.
[<RequireQualifiedAccess>]
module AdaptiveOde =
    /// rtol = atol = 1e-5 (the paper's), per-sample control, automatic first step, 10,000 steps at most.
    let defaults =
        { Rtol = 1e-5
          Atol = 1e-5
          Control = StepControl.PerSample
          InitialStep = None
          MinStep = None
          MaxStep = None
          MaxSteps = 10_000
          Safety = 0.9
          MinFactor = 0.2
          MaxFactor = 10.0
          PiBeta = 0.0
          Observer = None }

    /// Check every setting; throws ArgumentException naming the offending one.
    let validate (s: AdaptiveSettings) =
        Check.positive "rtol" s.Rtol
        Check.positive "atol" s.Atol
        if s.Rtol >= 1.0 then
            Check.fail "rtol" s.Rtol "below 1"
        s.InitialStep |> Option.iter (Check.positive "initialStep")
        s.MinStep |> Option.iter (Check.positive "minStep")
        s.MaxStep |> Option.iter (Check.positive "maxStep")
        match s.MinStep, s.MaxStep with
        | Some lo, Some hi when lo > hi -> Check.fail "minStep" lo (sprintf "at most maxStep (%g)" hi)
        | _ -> ()
        Check.positiveInt "maxSteps" s.MaxSteps
        Check.finite "safety" s.Safety
        if s.Safety <= 0.0 || s.Safety > 1.0 then
            Check.fail "safety" s.Safety "in (0, 1]"
        Check.finite "minFactor" s.MinFactor
        if s.MinFactor <= 0.0 || s.MinFactor >= 1.0 then
            Check.fail "minFactor" s.MinFactor "in (0, 1)"
        Check.finite "maxFactor" s.MaxFactor
        if s.MaxFactor <= 1.0 then
            Check.fail "maxFactor" s.MaxFactor "above 1"
        Check.finite "piBeta" s.PiBeta
        if s.PiBeta < 0.0 || s.PiBeta > 0.2 then
            Check.fail "piBeta" s.PiBeta "in [0, 0.2]"

    // ---- the Dormand-Prince 5(4) tableau (Dormand & Prince 1980) ----

    /// Nodes c_i of the seven stages.
    let nodes = [| 0.0; 1.0 / 5.0; 3.0 / 10.0; 4.0 / 5.0; 8.0 / 9.0; 1.0; 1.0 |]

    /// Coupling coefficients a_ij (row i: stage i + 1 from stages 1 .. i). The last row is the
    /// order-5 weights, so stage 7 is evaluated at the new state (first same as last).
    let coupling =
        [| [||]
           [| 1.0 / 5.0 |]
           [| 3.0 / 40.0; 9.0 / 40.0 |]
           [| 44.0 / 45.0; -56.0 / 15.0; 32.0 / 9.0 |]
           [| 19372.0 / 6561.0; -25360.0 / 2187.0; 64448.0 / 6561.0; -212.0 / 729.0 |]
           [| 9017.0 / 3168.0; -355.0 / 33.0; 46732.0 / 5247.0; 49.0 / 176.0; -5103.0 / 18656.0 |]
           [| 35.0 / 384.0; 0.0; 500.0 / 1113.0; 125.0 / 192.0; -2187.0 / 6784.0; 11.0 / 84.0 |] |]

    /// Order-5 weights b_i.
    let weights5 = [| 35.0 / 384.0; 0.0; 500.0 / 1113.0; 125.0 / 192.0; -2187.0 / 6784.0; 11.0 / 84.0; 0.0 |]

    /// Embedded order-4 weights.
    let weights4 =
        [| 5179.0 / 57600.0
           0.0
           7571.0 / 16695.0
           393.0 / 640.0
           -92097.0 / 339200.0
           187.0 / 2100.0
           1.0 / 40.0 |]

    /// Error weights: order-5 minus order-4.
    let errorWeights = Array.map2 (-) weights5 weights4

    let private machineEpsilon (dtype: torch.ScalarType) =
        if dtype = torch.float64 then 2.220446049250313e-16
        elif dtype = torch.float32 then 1.1920928955078125e-07
        elif dtype = torch.bfloat16 then 0.0078125
        else 0.0009765625

    /// The solver loop on x (the caller's copy, updated in place and returned as the state).
    let private solve (settings: AdaptiveSettings) (fieldInto: TimeFieldInto) (x: Tensor) (t0: float) (t1: float) : AdaptiveResult =
        let batch = x.shape.[0]
        let dtype, device = x.dtype, x.device
        let bshape = Array.init (int (x.dim ())) (fun i -> if i = 0 then batch else 1L)
        let direction = if t1 >= t0 then 1.0 else -1.0
        let span = abs (t1 - t0)
        let rtol, atol = settings.Rtol, settings.Atol
        // TorchSharp Scalars have finalizers: one passed inline can be collected while the native call
        // that uses it runs. Every Scalar of the solve is therefore cached here, alive until the end.
        let scalars = Collections.Generic.Dictionary<float, Scalar>()
        let sc (v: float) =
            match scalars.TryGetValue v with
            | true, s -> s
            | _ ->
                let s = Tensors.scalar v
                scalars.[v] <- s
                s
        // working buffers, updated in place: the seven stage derivatives, a stage state, the
        // candidate state, the error estimate, and per-sample time, step size and counters
        let ks = Array.init 7 (fun _ -> torch.empty_like (x))
        use stage = torch.empty_like (x)
        use yNew = torch.empty_like (x)
        use errBuf = torch.empty_like (x)
        use hAbs = torch.empty ([| batch |], dtype = dtype, device = device)
        use justRejected = torch.zeros ([| batch |], dtype = torch.ScalarType.Bool, device = device)
        use errPrev = torch.full ([| batch |], sc 1e-4, dtype = dtype, device = device)
        use accepted = torch.zeros ([| batch |], dtype = torch.int64, device = device)
        use rejected = torch.zeros ([| batch |], dtype = torch.int64, device = device)
        use t = torch.full ([| batch |], sc t0, dtype = dtype, device = device)
        let mutable nfe = 0

        // k <- field(y, time); whatever the field allocates is disposed with the local scope.
        let evalInto (k: Tensor) (y: Tensor) (time: Tensor) =
            use scope = torch.NewDisposeScope()
            fieldInto y time k
            nfe <- nfe + 1

        // RMS of v / scale per sample ([B]), or over the whole batch (broadcast to [B]).
        // v is overwritten (v / scale, squared); only the [B] results are new tensors.
        let norm (v: Tensor) (scale: Tensor) : Tensor =
            v.div_(scale).mul_(v) |> ignore
            // the mean over every dimension but the batch's (no reshaped view of the state)
            let ms =
                if v.dim () = 1L then
                    v.clone ()
                else
                    v.mean (Array.init (int (v.dim ()) - 1) (fun i -> int64 i + 1L))
            match settings.Control with
            | StepControl.PerSample -> ms.sqrt ()
            | StepControl.BatchGlobal -> ms.mean().sqrt().expand([| batch |])

        try
            // ---- first evaluation and first step size ----
            evalInto ks.[0] x t
            (use scope = torch.NewDisposeScope()
             if not (ks.[0].isfinite().all().item<bool>()) then
                 raise (InvalidOperationException(sprintf "The vector field is not finite at the initial state (t = %g)." t0))
             match settings.InitialStep with
             | Some h -> hAbs.fill_ (sc (min h span)) |> ignore
             | None ->
                 // Hairer, Norsett & Wanner, Solving ODEs I, II.4: h0 from the sizes of y and f,
                 // h1 from a finite-difference estimate of f's change; take min(100 h0, h1).
                 let scale = x.abs () * rtol + atol
                 let d0 = norm (x.clone ()) scale
                 let d1 = norm (ks.[0].clone()) scale
                 let small = d0.lt(sc 1e-5).logical_or(d1.lt (sc 1e-5))
                 let h0 = torch.where(small, torch.full_like (d0, sc 1e-6), d0 / d1 * 0.01).clamp_max(sc span)
                 let y1 = x + ks.[0] * (h0 * direction).reshape(bshape)
                 evalInto stage y1 (t + h0 * direction)
                 let d2 = norm (stage - ks.[0]) scale / h0
                 let dmax = torch.maximum (d1, d2)
                 let h1 = torch.where (dmax.le (sc 1e-15), (h0 * 1e-3).clamp_min(sc 1e-6), (dmax / 0.01).pow(sc -0.2))
                 hAbs.copy_ (torch.minimum(h0 * 100.0, h1).clamp_max(sc span)) |> ignore
             settings.MaxStep |> Option.iter (fun m -> hAbs.clamp_max_ (sc m) |> ignore))

            let epsMachine = machineEpsilon dtype
            let minStep = defaultArg settings.MinStep 0.0
            let mutable steps = 0
            let mutable running = true
            while running do
                if steps >= settings.MaxSteps then
                    use _ = torch.NewDisposeScope()
                    let reached = Tensors.toHost t
                    raise (
                        InvalidOperationException(
                            sprintf
                                "The adaptive ODE solver did not reach t = %g within MaxSteps = %d steps (times reached: %g .. %g). Raise MaxSteps or loosen rtol/atol."
                                t1
                                settings.MaxSteps
                                (Array.min reached)
                                (Array.max reached)
                        )
                    )
                steps <- steps + 1
                use scope = torch.NewDisposeScope()
                let remaining = (t - t1) * (-direction) // >= 0; zero once a sample is done
                let active = remaining.gt (sc 0.0)
                let hUsed = torch.minimum (hAbs, remaining) // zero for finished samples
                let h = hUsed * direction
                let hb = h.reshape (bshape)
                let tNew = torch.where (hAbs.ge (remaining), torch.full_like (t, sc t1), t + h)
                // stages 2 .. 7; the input of stage 7 is the order-5 solution, the candidate state
                for i in 1..6 do
                    let target = if i = 6 then yNew else stage
                    target.copy_ (x) |> ignore
                    coupling.[i]
                    |> Array.iteri (fun j a ->
                        if a <> 0.0 then
                            target.addcmul_ (ks.[j], hb, sc a) |> ignore)
                    let ti = if nodes.[i] = 1.0 then tNew else t + h * nodes.[i]
                    evalInto ks.[i] target ti
                // local error estimate h sum_i (b_i - b*_i) k_i and its scaled RMS norm, in place: the
                // scale atol + rtol max(|x|, |y_new|) is formed in the stage buffer with k_2 as scratch
                // (stages 2 to 6 are not needed once the error is formed), max(a, b) = a + relu(b - a)
                errBuf.fill_ (sc 0.0) |> ignore // (zero_ would return a second handle to the buffer)
                errorWeights
                |> Array.iteri (fun j e ->
                    if e <> 0.0 then
                        errBuf.add_ (ks.[j], sc e) |> ignore)
                errBuf.mul_ (hb) |> ignore
                stage.copy_(x).abs_() |> ignore
                ks.[1].copy_(yNew).abs_().sub_(stage).relu_() |> ignore
                stage.add_(ks.[1]).mul_(sc rtol).add_(sc atol) |> ignore
                let err = norm errBuf stage
                let ok = err.le (sc 1.0) // false for NaN
                let acc = ok.logical_and (active)
                let rej = ok.logical_not().logical_and(active)
                // next step size, scaled from the step actually taken
                let raw = err.pow (sc -0.2) * settings.Safety
                let grow =
                    if settings.PiBeta = 0.0 then
                        raw
                    else
                        err.pow (sc -(0.2 - 0.75 * settings.PiBeta)) * errPrev.pow (sc settings.PiBeta) * settings.Safety
                let grow = grow.clamp_max(sc settings.MaxFactor).clamp_min(sc settings.MinFactor)
                let grow = torch.where (justRejected, grow.clamp_max (sc 1.0), grow)
                let shrink = raw.nan_to_num(0.0).clamp_min(sc settings.MinFactor)
                let hNext = hUsed * torch.where (ok, grow, shrink)
                let hNext =
                    match settings.MaxStep with
                    | Some m -> hNext.clamp_max (sc m)
                    | None -> hNext
                hAbs.copy_ (torch.where (active, hNext, hAbs)) |> ignore
                justRejected.copy_ (rej) |> ignore
                errPrev.copy_ (torch.where (acc, err.clamp_min (sc 1e-4), errPrev)) |> ignore
                // accepted samples take the candidate and the last stage becomes the next first one (first
                // same as last), in place and exactly: zero what is replaced and what is not taken, then
                // add (a rejected candidate may hold inf or NaN; it is zeroed, never multiplied).
                // y_new and k_7 are rewritten by the next step.
                let accB = acc.reshape (bshape)
                let keepB = acc.logical_not().reshape(bshape)
                x.masked_fill_(accB, sc 0.0).add_(yNew.masked_fill_ (keepB, sc 0.0)) |> ignore
                ks.[0].masked_fill_(accB, sc 0.0).add_(ks.[6].masked_fill_(keepB, sc 0.0)) |> ignore
                t.copy_ (torch.where (acc, tNew, t)) |> ignore
                accepted.add_ (acc) |> ignore
                rejected.add_ (rej) |> ignore
                // the only per-step host read: [any sample still running; any step size below its floor]
                let running' = t.ne (sc t1)
                let floor = t.abs().mul(sc (10.0 * epsMachine)).clamp_min(sc minStep)
                let tooSmall = hAbs.lt(floor).logical_and(running')
                let flags = torch.stack([| running'.any (); tooSmall.any () |], 0L).cpu().data<bool>().ToArray()
                settings.Observer |> Option.iter (fun observe -> observe (steps - 1) t x)
                if flags.[1] then
                    let i = tooSmall.nonzero().flatten().[0L].item<int64>()
                    let at (v: Tensor) = v.[i].to_type(torch.float64).item<float>()
                    raise (
                        InvalidOperationException(
                            sprintf
                                "The adaptive ODE solver's step size fell to %g at t = %g (sample %d, error norm %g)%s. The problem is too stiff for rtol = %g, atol = %g, or the vector field is not finite there."
                                (at hAbs)
                                (at t)
                                i
                                (at err)
                                (match settings.MinStep with
                                 | Some m -> sprintf ", below MinStep = %g" m
                                 | None -> "")
                                rtol
                                atol
                        )
                    )
                running <- flags.[0]
            let host (c: Tensor) =
                use scope = torch.NewDisposeScope()
                c.cpu().data<int64>().ToArray() |> Array.map int
            { State = x; Nfe = nfe; Steps = steps; Accepted = host accepted; Rejected = host rejected }
        finally
            for k in ks do
                k.Dispose()
            for s in scalars.Values do
                s.Dispose()

    /// A returning field as a writing one: the result is shape-checked and copied into the buffer.
    let private writing (field: TimeField) : TimeFieldInto =
        fun y time k ->
            let out = field y time
            if isNull out || not (Check.shapesEqual out y) then
                raise (
                    InvalidOperationException(
                        sprintf
                            "The vector field returned shape %A for a state of shape %A; it must return a tensor shaped like the state."
                            (if isNull out then null else out.shape)
                            y.shape
                    )
                )
            k.copy_ (out) |> ignore

    let private run (settings: AdaptiveSettings) (fieldInto: TimeFieldInto) (x0: Tensor) (t0: float) (t1: float) : AdaptiveResult =
        Native.ensureLoaded ()
        validate settings
        Check.floating "x" x0
        if x0.dim () < 1L || x0.shape.[0] < 1L then
            Check.fail "x" x0.shape "a tensor with a batch dimension"
        Check.finite "t0" t0
        Check.finite "t1" t1
        use _noGrad = torch.no_grad ()
        let x =
            use detached = x0.detach ()
            detached.clone ()
        if t0 = t1 then
            let nb = int x.shape.[0]
            { State = x; Nfe = 0; Steps = 0; Accepted = Array.zeroCreate nb; Rejected = Array.zeroCreate nb }
        else
            try
                solve settings fieldInto x t0 t1
            with _ ->
                x.Dispose()
                reraise ()

    /// Integrate x' = field(x, t) from t0 to t1 (either direction) with adaptive Dormand-Prince 5(4)
    /// steps. x is [B, ...] and is not modified; times are kept per sample in x's dtype. Runs
    /// without gradients (a field that needs them enables them itself). Throws
    /// InvalidOperationException when MaxSteps is exhausted, when a step size falls below its floor
    /// (MinStep, or ten rounding units of t), or when the field is not finite at the start.
    let integrate (settings: AdaptiveSettings) (field: TimeField) (x0: Tensor) (t0: float) (t1: float) : AdaptiveResult =
        run settings (writing field) x0 t0 t1

    /// `integrate` with a field that writes its value into the solver's stage buffer instead of
    /// returning a fresh tensor (see `TimeFieldInto`).
    let integrateInto (settings: AdaptiveSettings) (field: TimeFieldInto) (x0: Tensor) (t0: float) (t1: float) : AdaptiveResult =
        run settings field x0 t0 t1
