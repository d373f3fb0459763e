namespace ScoreSde

open System
open TorchSharp

/// How a condition sets the known part of the state while a sampler runs.
[<RequireQualifiedAccess>]
type Replacement =
    /// After every update the known part becomes a fresh draw alpha_t y + sigma_t z of its forward
    /// marginal at the time reached: the paper's inpainter and colorizer (Song et al. 2021, App. I.2).
    /// The model sees the state as it is. Makes the deterministic samplers stochastic; refused by the
    /// adaptive solvers (their error estimates would measure the draws).
    | Fresh
    /// One latent z for the known part, drawn when the run starts: the known part follows the path
    /// alpha_t y + sigma_t z, the model is evaluated with the state's known part on that path, and its
    /// output on the known part is the path's own (noise z, score -z / sigma_t, data y). The probability
    /// flow is then an ODE of its own (the unknown part driven by the model, the known part by the
    /// path), so the ODE solvers and DPM-Solver stay deterministic and their caches consistent.
    | FixedLatent

/// Known coordinates of the data in an orthonormal basis: with U the matrix `Basis` acting on dimension 1
/// of the state (the identity when None), (U x)_i = Values_i wherever Mask_i is nonzero. Inpainting is
/// the identity basis; the paper's colorization is a 3 x 3 channel basis with the grey channel known.
/// A value for `Sampling.Condition`: every sampler and SDE takes it.
type Condition =
    {
        /// y, the known values in the basis (entries off the mask are ignored); broadcastable to the
        /// state's shape (one per sample, [B, ...], or one for the batch, e.g. [1, ...]). Not modified.
        Values: Tensor
        /// Nonzero where a coordinate is known; broadcastable to the state's shape. Not modified.
        Mask: Tensor
        /// An orthonormal C x C matrix, C the size of the state's dimension 1 (None: the identity).
        Basis: Tensor option
        /// None: the method's default, `Replacement.Fresh` for the PC sampler (the paper's) and
        /// `Replacement.FixedLatent` for the probability flow and DPM-Solver (see docs/conditional.md).
        Replacement: Replacement option
    }

/// What a sampling method allows a condition to do (internal: `Sampler` says which applies).
[<RequireQualifiedAccess>]
type internal StepKind =
    /// The PC sampler: stochastic updates at times shared by the batch.
    | Stochastic
    /// A deterministic method with steps at times shared by the batch, fixed in advance.
    | FixedSteps
    /// The adaptive DPM-Solver: steps chosen by an error estimate, times shared by the batch.
    | AdaptiveShared
    /// Dormand-Prince: steps chosen by an error estimate, times possibly per sample.
    | AdaptivePerSample

[<RequireQualifiedAccess>]
module Condition =
    /// Inpainting: x = values wherever mask is nonzero.
    let inpaint (values: Tensor) (mask: Tensor) : Condition = { Values = values; Mask = mask; Basis = None; Replacement = None }

    /// A linear condition: (U x) = values wherever mask is nonzero, U = basis (orthonormal, acting on
    /// dimension 1 of a sample).
    let linear (basis: Tensor) (values: Tensor) (mask: Tensor) : Condition =
        { Values = values; Mask = mask; Basis = Some basis; Replacement = None }

    /// The same condition with the given replacement.
    let withReplacement (replacement: Replacement) (c: Condition) = { c with Replacement = Some replacement }

    /// The replacement a method uses: the condition's, else Fresh for the PC sampler and FixedLatent for
    /// the deterministic methods.
    let internal replacementFor (kind: StepKind) (c: Condition) =
        match c.Replacement, kind with
        | Some r, _ -> r
        | None, StepKind.Stochastic -> Replacement.Fresh
        | None, _ -> Replacement.FixedLatent

    /// U applied along dimension 1 of v (a fresh tensor; v not modified).
    let internal applyBasis (u: Tensor) (v: Tensor) : Tensor =
        use moved = v.movedim ([| 1L |], [| -1L |])
        use ut = u.t ()
        use product = moved.matmul (ut)
        use back = product.movedim ([| -1L |], [| 1L |])
        back.contiguous ()

    /// U v (or U^T v) along dimension 1 with U converted to v's dtype and device; a copy of v for None.
    let private inBasis (name: string) (transpose: bool) (basis: Tensor option) (v: Tensor) : Tensor =
        Check.floating name v
        match basis with
        | None -> v.clone ()
        | Some u ->
            use uc = u.``to`` (v.dtype, v.device)
            use ut = if transpose then uc.t () else uc.alias ()
            applyBasis ut v

    /// The coordinates U x of x in a basis (dimension 1 transformed; x itself for None, as a copy): what
    /// `Values` holds for data x.
    let coordinates (basis: Tensor option) (x: Tensor) : Tensor = inBasis "x" false basis x

    /// The data U^T y of coordinates y (the inverse of `coordinates`).
    let ofCoordinates (basis: Tensor option) (y: Tensor) : Tensor = inBasis "y" true basis y

    /// Check a condition on its own and against the method (ArgumentException naming the setting).
    let internal validate (kind: StepKind) (c: Condition) =
        Check.floating "values" c.Values
        Check.notNull "mask" c.Mask
        match c.Basis with
        | None -> ()
        | Some u ->
            Check.floating "basis" u
            if u.dim () <> 2L || u.shape.[0] <> u.shape.[1] then
                Check.fail "basis" u.shape "a square matrix (C x C)"
            use u64 = u.to_type (torch.float64)
            use ut = u64.t ()
            use gram = u64.matmul (ut)
            use eye = torch.eye (u.shape.[0], dtype = torch.float64, device = u.device)
            use diff = gram.sub (eye)
            use absolute = diff.abs ()
            use largest = absolute.max ()
            let worst = largest.item<float>()
            if not (worst <= 1e-4) then
                Check.fail "basis" (sprintf "a matrix with |U U^T - I| up to %g" worst) "orthonormal (U U^T = I within 1e-4)"
        match replacementFor kind c, kind with
        | Replacement.Fresh, (StepKind.AdaptiveShared | StepKind.AdaptivePerSample) ->
            Check.fail
                "replacement"
                "Fresh"
                "FixedLatent with an adaptive solver (fresh draws of the known part would drive its error estimate)"
        | _ -> ()

    /// Check the condition's tensors against the state x.
    let internal checkShapes (c: Condition) (x: Tensor) =
        let fits (name: string) (t: Tensor) =
            let ok =
                t.dim () <= x.dim ()
                && Seq.forall
                    (fun i ->
                        let d = t.size (int i - int (x.dim () - t.dim ()))
                        d = 1L || d = x.size (int i))
                    (seq { x.dim () - t.dim () .. x.dim () - 1L })
            if not ok then
                raise (
                    ArgumentException(
                        sprintf
                            "%s has shape %s, which does not broadcast to the state's shape %s."
                            name
                            (Check.shapeText t.shape)
                            (Check.shapeText x.shape),
                        name
                    )
                )
        fits "values" c.Values
        fits "mask" c.Mask
        match c.Basis with
        | Some u when x.dim () < 2L || u.shape.[0] <> x.shape.[1] ->
            Check.fail
                "basis"
                u.shape
                (sprintf "C x C with C = %d, the size of the state's dimension 1" (if x.dim () < 2L then 1L else x.shape.[1]))
        | _ -> ()

/// One run's condition: its tensors in the state's dtype and device, working buffers, the model the
/// sampler calls and the replacements it makes. Without a condition every member is a no-op.
type internal ConditionRun
    private
    (
        sde: Sde,
        kind: StepKind,
        replacement: Replacement,
        noise: Noise,
        model: Model,
        values: Tensor,
        mask: Tensor,
        basis: Tensor,
        basisT: Tensor,
        known: Tensor,
        latent: Tensor,
        projected: Tensor
    ) =
    let active = not (isNull values)

    /// dst <- U^T [(1 - m) U dst + m k] in place; k (in the basis, shaped like dst) is overwritten.
    let mix (dst: Tensor) (k: Tensor) =
        if isNull basis then
            k.sub_(dst).mul_(mask) |> ignore
            Tensors.addInPlace dst k |> ignore
        else
            use ud = Condition.applyBasis basis dst
            k.sub_(ud).mul_(mask) |> ignore
            Tensors.addInPlace ud k |> ignore
            use back = Condition.applyBasis basisT ud
            dst.copy_ (back) |> ignore

    /// known <- alpha y + sigma z (z the latent or a fresh draw), host coefficients.
    let fillPath (t: float) =
        if replacement = Replacement.FixedLatent then known.copy_ (latent) |> ignore else noise.Fill known
        Kernel.scale known (Sde.sigmaAt sde t)
        Kernel.addScaled known values (Sde.alphaAt sde t)

    /// The model evaluated at the state with its known part on the latent's path, its known output the
    /// path's own; a fresh tensor per call. Times shared by the batch use host coefficients; per-sample
    /// times (Dormand-Prince's per-sample control) tensor ones.
    let forward (x: Tensor) (t: Tensor) : Tensor =
        let ts = Tensors.readHost t
        let shared = Tensors.allEqual ts
        use scope = torch.NewDisposeScope()
        projected.copy_ (x) |> ignore
        let alpha, sigma =
            if shared then
                null, null
            else
                let tb = Tensors.broadcastTime "t" t x
                Sde.alpha sde tb, Sde.sigma sde tb
        if shared then
            fillPath ts.[0]
        else
            use one = Tensors.scalar 1.0
            known.copy_(latent).mul_(sigma).addcmul_(values, alpha, one) |> ignore
        mix projected known
        let out = Model.eval model projected t
        let r = out.clone ()
        match model.Output with
        | ModelOutput.Noise -> known.copy_ (latent) |> ignore
        | ModelOutput.Data -> known.copy_ (values) |> ignore
        | ModelOutput.Score ->
            known.copy_ (latent) |> ignore
            if shared then
                Kernel.scale known (-1.0 / Sde.sigmaAt sde ts.[0])
            else
                known.div_(sigma).neg_() |> ignore
        mix r known
        r.MoveToOuterDisposeScope()

    /// The model the sampler calls: the caller's, or (FixedLatent) the conditioned one.
    member _.Model: Model = if active && replacement = Replacement.FixedLatent then { model with Forward = forward } else model

    /// Set the known part of the starting state (at the SDE's end time T).
    member _.Start(x: Tensor) =
        if active then
            fillPath sde.T
            mix x known

    /// After a corrector or predictor update that reached time t: replace the known part (every method
    /// whose steps share a time; Dormand-Prince's state is left to its field).
    member _.AfterUpdate (t: float) (x: Tensor) =
        if active && kind <> StepKind.AdaptivePerSample then
            fillPath t
            mix x known

    /// At the end: the known part exactly y.
    member _.Finish(x: Tensor) =
        if active then
            known.copy_ (values) |> ignore
            mix x known

    interface IDisposable with
        member _.Dispose() =
            for t in [ values; mask; basis; basisT; known; latent; projected ] do
                if not (isNull t) then
                    t.Dispose()

    /// A run of the condition (None: no condition) for the working state x (its shape, dtype and
    /// device); the fixed latent, if any, is drawn from `noise` now. Nothing is left allocated when this
    /// throws.
    static member Start(sde: Sde, kind: StepKind, condition: Condition option, model: Model, noise: Noise, x: Tensor) =
        match condition with
        | None -> new ConditionRun(sde, kind, Replacement.Fresh, noise, model, null, null, null, null, null, null, null)
        | Some c ->
            let replacement = Condition.replacementFor kind c
            use scope = torch.NewDisposeScope()
            let values = c.Values.detach().``to``(x.dtype, x.device, copy = true)
            let mask =
                use zero = Tensors.scalar 0.0
                use nonzero = c.Mask.ne (zero)
                nonzero.``to`` (x.dtype, x.device)
            let basis, basisT =
                match c.Basis with
                | None -> null, null
                | Some u ->
                    let b = u.detach().``to``(x.dtype, x.device, copy = true)
                    b, b.t().contiguous()
            let known = torch.empty_like (x)
            let latent, projected =
                if replacement = Replacement.FixedLatent then
                    let z = torch.empty_like (x)
                    noise.Fill z
                    z, torch.empty_like (x)
                else
                    null, null
            let owned = [ values; mask; basis; basisT; known; latent; projected ]
            for t in owned do
                if not (isNull t) then
                    t.DetachFromDisposeScope() |> ignore
            new ConditionRun(sde, kind, replacement, noise, model, values, mask, basis, basisT, known, latent, projected)
