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
        /// Called after every attempted step (see `Observer`; the time is the slowest sample's).
        Observer: Observer option
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

/// The pieces of one adaptive Dormand-Prince 5(4) step (Dormand & Prince 1980), composed by
/// `AdaptiveOde`'s loop: the tableau, the solve's working memory, the initial step size, one attempted
/// step, the scaled error norm, the step-size controller and the exact masked accept.
[<RequireQualifiedAccess>]
module Dopri5 =
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

    /// The working memory of one solve, allocated once: the seven stage derivatives, a stage state, the
    /// candidate state and the error estimate (all shaped like the state), the per-sample time, step
    /// size, last error and counters, and every Scalar of the solve (TorchSharp Scalars have finalizers:
    /// one passed inline can be collected while the native call that uses it runs, so each is cached
    /// here, alive until the end).
    type internal Work(settings: AdaptiveSettings, fieldInto: TimeFieldInto, x: Tensor, t0: float, t1: float) =
        let batch = x.shape.[0]
        let dtype, device = x.dtype, x.device
        let scalars = Collections.Generic.Dictionary<float, Scalar>()
        let sc (v: float) =
            match scalars.TryGetValue v with
            | true, s -> s
            | _ ->
                let s = Tensors.scalar v
                scalars.[v] <- s
                s
        let vector () = torch.empty ([| batch |], dtype = dtype, device = device)
        let ks = Array.init 7 (fun _ -> torch.empty_like (x))
        let owned =
            [ torch.empty_like (x)
              torch.empty_like (x)
              torch.empty_like (x)
              vector ()
              torch.zeros ([| batch |], dtype = torch.ScalarType.Bool, device = device)
              torch.full ([| batch |], sc 1e-4, dtype = dtype, device = device)
              torch.zeros ([| batch |], dtype = torch.int64, device = device)
              torch.zeros ([| batch |], dtype = torch.int64, device = device)
              torch.full ([| batch |], sc t0, dtype = dtype, device = device) ]
        member val Nfe = 0 with get, set
        /// The solve's cached Scalar of a value (a method: call it directly, a function value of it would
        /// allocate per use).
        member _.Sc(v: float) : Scalar = sc v
        member _.Batch = batch
        /// [B, 1, ...]: a per-sample vector broadcast over the state.
        member val BShape = Array.init (int (x.dim ())) (fun i -> if i = 0 then batch else 1L)
        member _.Direction = if t1 >= t0 then 1.0 else -1.0
        member _.Ks = ks
        member _.Stage = owned.[0]
        member _.YNew = owned.[1]
        member _.Err = owned.[2]
        member _.HAbs = owned.[3]
        member _.JustRejected = owned.[4]
        member _.ErrPrev = owned.[5]
        member _.Accepted = owned.[6]
        member _.Rejected = owned.[7]
        member _.T = owned.[8]

        /// k <- field(y, time); whatever the field allocates is disposed with the local scope.
        member w.EvalInto(k: Tensor, y: Tensor, time: Tensor) =
            use scope = torch.NewDisposeScope()
            fieldInto y time k
            w.Nfe <- w.Nfe + 1

        /// RMS of v / scale per sample ([B]), or over the whole batch (broadcast to [B]). v is overwritten
        /// (v / scale, squared); only the [B] results are new tensors.
        member _.Norm(v: Tensor, scale: Tensor) : Tensor =
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

        interface IDisposable with
            member _.Dispose() =
                for t in Seq.append ks owned do
                    t.Dispose()
                for s in scalars.Values do
                    s.Dispose()

    /// The first step size (in a dispose scope of the caller's): the given one, or Hairer, Norsett &
    /// Wanner's estimate (Solving ODEs I, II.4): h0 from the sizes of y and f, h1 from a
    /// finite-difference estimate of f's change, min(100 h0, h1). ks.[0] holds f(x, t0).
    let internal initialStep (settings: AdaptiveSettings) (w: Work) (x: Tensor) (span: float) =
        match settings.InitialStep with
        | Some h -> w.HAbs.fill_ (w.Sc(min h span)) |> ignore
        | None ->
            let k0 = w.Ks.[0]
            // Every Scalar is the solve's cached one (w.Sc), alpha included: no operator creates one.
            let one = w.Sc(1.0)
            let scale = x.abs().mul(w.Sc(settings.Rtol)).add(w.Sc(settings.Atol), one)
            let d0 = w.Norm(x.clone (), scale)
            let d1 = w.Norm(k0.clone (), scale)
            let small = d0.lt(w.Sc(1e-5)).logical_or(d1.lt (w.Sc(1e-5)))
            let h0 = torch.where(small, torch.full_like (d0, w.Sc(1e-6)), d0.div(d1).mul(w.Sc(0.01))).clamp_max(w.Sc(span))
            let hSigned = h0.mul (w.Sc(w.Direction))
            let y1 = x.add (k0.mul (hSigned.reshape (w.BShape)), one)
            w.EvalInto(w.Stage, y1, w.T.add (hSigned, one))
            let d2 = w.Norm(w.Stage.add (k0, w.Sc(-1.0)), scale).div(h0)
            let dmax = torch.maximum (d1, d2)
            let h1 = torch.where (dmax.le (w.Sc(1e-15)), h0.mul(w.Sc(1e-3)).clamp_min(w.Sc(1e-6)), dmax.div(w.Sc(0.01)).pow(w.Sc(-0.2)))
            w.HAbs.copy_ (torch.minimum(h0.mul (w.Sc(100.0)), h1).clamp_max(w.Sc(span))) |> ignore
        settings.MaxStep |> Option.iter (fun m -> w.HAbs.clamp_max_ (w.Sc(m)) |> ignore)

    /// One attempted step from x with step sizes hb ([B, 1, ...], signed): stages 2 to 7; the input of
    /// stage 7 is the order-5 solution, the candidate state, left in YNew (first same as last).
    let internal attempt (w: Work) (x: Tensor) (hb: Tensor) (h: Tensor) (tNew: Tensor) =
        for i in 1..6 do
            let target = if i = 6 then w.YNew else w.Stage
            target.copy_ (x) |> ignore
            coupling.[i]
            |> Array.iteri (fun j a ->
                if a <> 0.0 then
                    target.addcmul_ (w.Ks.[j], hb, w.Sc(a)) |> ignore)
            let ti = if nodes.[i] = 1.0 then tNew else w.T.add (h.mul (w.Sc(nodes.[i])), w.Sc(1.0))
            w.EvalInto(w.Ks.[i], target, ti)

    /// The local error estimate h sum_i (b_i - b*_i) k_i and its scaled RMS norm ([B]), in place: the
    /// scale atol + rtol max(|x|, |y_new|) is formed in the stage buffer with k_2 as scratch (stages 2
    /// to 6 are not needed once the error is formed), max(a, b) = a + relu(b - a).
    let internal errorNorm (settings: AdaptiveSettings) (w: Work) (x: Tensor) (hb: Tensor) : Tensor =
        w.Err.fill_ (w.Sc(0.0)) |> ignore // (zero_ would return a second handle to the buffer)
        errorWeights
        |> Array.iteri (fun j e ->
            if e <> 0.0 then
                w.Err.add_ (w.Ks.[j], w.Sc(e)) |> ignore)
        w.Err.mul_ (hb) |> ignore
        w.Stage.copy_(x).abs_() |> ignore
        w.Ks.[1].copy_(w.YNew).abs_().sub_(w.Stage).relu_() |> ignore
        w.Stage.add_(w.Ks.[1], w.Sc(1.0)).mul_(w.Sc(settings.Rtol)).add_(w.Sc(settings.Atol), w.Sc(1.0))
        |> ignore
        w.Norm(w.Err, w.Stage)

    /// The step-size controller: accept where err <= 1 (false for NaN) among the active samples, and
    /// the next step size scaled from the step actually taken, Safety err^(-1/5) (or the PI form),
    /// clamped to [MinFactor, MaxFactor] and to 1 right after a rejection. Updates the step sizes, the
    /// rejection flags and the last accepted errors; returns the accept and reject masks.
    let internal control (settings: AdaptiveSettings) (w: Work) (err: Tensor) (hUsed: Tensor) (active: Tensor) =
        let ok = err.le (w.Sc(1.0))
        let acc = ok.logical_and (active)
        let rej = ok.logical_not().logical_and(active)
        let raw = err.pow(w.Sc(-0.2)).mul(w.Sc(settings.Safety))
        let grow =
            if settings.PiBeta = 0.0 then
                raw
            else
                err.pow(w.Sc(-(0.2 - 0.75 * settings.PiBeta))).mul(w.ErrPrev.pow (w.Sc(settings.PiBeta))).mul(w.Sc(settings.Safety))
        let grow = grow.clamp_max(w.Sc(settings.MaxFactor)).clamp_min(w.Sc(settings.MinFactor))
        let grow = torch.where (w.JustRejected, grow.clamp_max (w.Sc(1.0)), grow)
        let shrink = raw.nan_to_num(0.0).clamp_min(w.Sc(settings.MinFactor))
        let hNext = hUsed * torch.where (ok, grow, shrink)
        let hNext =
            match settings.MaxStep with
            | Some m -> hNext.clamp_max (w.Sc(m))
            | None -> hNext
        w.HAbs.copy_ (torch.where (active, hNext, w.HAbs)) |> ignore
        w.JustRejected.copy_ (rej) |> ignore
        w.ErrPrev.copy_ (torch.where (acc, err.clamp_min (w.Sc(1e-4)), w.ErrPrev)) |> ignore
        acc, rej

    /// Accepted samples take the candidate and the last stage becomes the next first one, in place and
    /// exactly: zero what is replaced and what is not taken, then add (a rejected candidate may hold inf
    /// or NaN; it is zeroed, never multiplied). YNew and k_7 are rewritten by the next step.
    let internal accept (w: Work) (x: Tensor) (acc: Tensor) (rej: Tensor) (tNew: Tensor) =
        let accB = acc.reshape (w.BShape)
        let keepB = acc.logical_not().reshape(w.BShape)
        let one = w.Sc(1.0)
        x.masked_fill_(accB, w.Sc(0.0)).add_(w.YNew.masked_fill_ (keepB, w.Sc(0.0)), one) |> ignore
        w.Ks.[0].masked_fill_(accB, w.Sc(0.0)).add_(w.Ks.[6].masked_fill_(keepB, w.Sc(0.0)), one) |> ignore
        w.T.copy_ (torch.where (acc, tNew, w.T)) |> ignore
        // the counters are integer tensors: an integral alpha
        use oneCount = Scalar.op_Implicit 1L
        w.Accepted.add_ (acc, oneCount) |> ignore
        w.Rejected.add_ (rej, oneCount) |> ignore
