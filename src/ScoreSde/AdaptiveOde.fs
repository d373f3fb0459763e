namespace ScoreSde

open System
open TorchSharp

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

    let private machineEpsilon (dtype: torch.ScalarType) =
        if dtype = torch.float64 then 2.220446049250313e-16
        elif dtype = torch.float32 then 1.1920928955078125e-07
        elif dtype = torch.bfloat16 then 0.0078125
        else 0.0009765625
    let private stepTooSmall (settings: AdaptiveSettings) (w: Dopri5.Work) (tooSmall: Tensor) (err: Tensor) =
        let i = tooSmall.nonzero().flatten().[0L].item<int64>()
        let at (v: Tensor) = v.[i].to_type(torch.float64).item<float>()
        raise (
            InvalidOperationException(
                sprintf
                    "The adaptive ODE solver's step size fell to %g at t = %g (sample %d, error norm %g)%s. The problem is too stiff for rtol = %g, atol = %g, or the vector field is not finite there."
                    (at w.HAbs)
                    (at w.T)
                    i
                    (at err)
                    (match settings.MinStep with
                     | Some m -> sprintf ", below MinStep = %g" m
                     | None -> "")
                    settings.Rtol
                    settings.Atol
            )
        )

    /// The solver loop on x (the caller's copy, updated in place and returned as the state).
    let private solve (settings: AdaptiveSettings) (fieldInto: TimeFieldInto) (x: Tensor) (t0: float) (t1: float) : AdaptiveResult =
        use w = new Dopri5.Work(settings, fieldInto, x, t0, t1)
        w.EvalInto(w.Ks.[0], x, w.T)
        (use scope = torch.NewDisposeScope()
         if not (w.Ks.[0].isfinite().all().item<bool>()) then
             raise (InvalidOperationException(sprintf "The vector field is not finite at the initial state (t = %g)." t0))
         Dopri5.initialStep settings w x (abs (t1 - t0)))
        let epsMachine = machineEpsilon x.dtype
        let minStep = defaultArg settings.MinStep 0.0
        let mutable steps = 0
        let mutable running = true
        while running do
            if steps >= settings.MaxSteps then
                use _ = torch.NewDisposeScope()
                let reached = Tensors.toHost w.T
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
            // (T - t1) (-direction) >= 0; zero once a sample is done. The solve's cached Scalars only.
            let remaining = w.T.add(w.Sc(-t1), w.Sc(1.0)).mul(w.Sc(-w.Direction))
            let active = remaining.gt (w.Sc(0.0))
            let hUsed = torch.minimum (w.HAbs, remaining) // zero for finished samples
            let h = hUsed.mul (w.Sc(w.Direction))
            let tNew = torch.where (w.HAbs.ge (remaining), torch.full_like (w.T, w.Sc(t1)), w.T.add (h, w.Sc(1.0)))
            let hb = h.reshape (w.BShape)
            Dopri5.attempt w x hb h tNew
            let err = Dopri5.errorNorm settings w x hb
            let acc, rej = Dopri5.control settings w err hUsed active
            Dopri5.accept w x acc rej tNew
            // the only per-step host read: [any sample still running; any step size below its floor]
            let running' = w.T.ne (w.Sc(t1))
            let floor = w.T.abs().mul(w.Sc(10.0 * epsMachine)).clamp_min(w.Sc(minStep))
            let tooSmall = w.HAbs.lt(floor).logical_and(running')
            let flags = torch.stack([| running'.any (); tooSmall.any () |], 0L).cpu().data<bool>().ToArray()
            settings.Observer
            |> Option.iter (fun observe ->
                // the time every sample has reached: the slowest sample's
                let ts = Tensors.readHost w.T
                observe (steps - 1) (if w.Direction < 0.0 then Array.max ts else Array.min ts) x)
            if flags.[1] then
                stepTooSmall settings w tooSmall err
            running <- flags.[0]
        let host (c: Tensor) =
            use scope = torch.NewDisposeScope()
            c.cpu().data<int64>().ToArray() |> Array.map int
        { State = x; Nfe = w.Nfe; Steps = steps; Accepted = host w.Accepted; Rejected = host w.Rejected }

    /// A returning field as a writing one: the result is shape-checked and copied into the buffer.
    let private writing (field: TimeField) : TimeFieldInto =
        fun y time k ->
            let out = field y time
            if isNull out || not (Check.shapesEqual out y) then
                raise (
                    InvalidOperationException(
                        sprintf
                            "The vector field returned shape %s for a state of shape %s; it must return a tensor shaped like the state."
                            (if isNull out then "null" else Check.shapeText out.shape)
                            (Check.shapeText y.shape)
                    )
                )
            k.copy_ (out) |> ignore

    /// Integrate in place on x, the caller's working copy (validated, without gradients), which becomes
    /// the result's State: what `integrateInto` does after copying its input.
    let internal integrateInPlace (settings: AdaptiveSettings) (fieldInto: TimeFieldInto) (x: Tensor) (t0: float) (t1: float) =
        validate settings
        Check.finite "t0" t0
        Check.finite "t1" t1
        use _noGrad = torch.no_grad ()
        if t0 = t1 then
            let nb = int x.shape.[0]
            { State = x; Nfe = 0; Steps = 0; Accepted = Array.zeroCreate nb; Rejected = Array.zeroCreate nb }
        else
            solve settings fieldInto x t0 t1

    let private run (settings: AdaptiveSettings) (fieldInto: TimeFieldInto) (x0: Tensor) (t0: float) (t1: float) : AdaptiveResult =
        Native.ensureLoaded ()
        validate settings
        Check.floating "x" x0
        if x0.dim () < 1L || x0.shape.[0] < 1L then
            Check.fail "x" x0.shape "a tensor with a batch dimension"
        let x =
            use detached = x0.detach ()
            detached.clone ()
        try
            integrateInPlace settings fieldInto x t0 t1
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
