namespace ScoreSde

open System
open TorchSharp

/// How to integrate an ODE between T and eps: a value the probability-flow sampler, the encoder and
/// the likelihood take.
[<RequireQualifiedAccess>]
type OdeMethod =
    /// A fixed-step solver on `steps` intervals of a time grid between T and eps (an explicit grid
    /// gives its own end points and step count, as in the samplers).
    | FixedStep of solver: OdeSolver * grid: TimeGrid * steps: int
    /// Adaptive Dormand-Prince 5(4) (`AdaptiveOde`).
    | Dopri5 of AdaptiveSettings

/// Settings of the probability-flow ODE sampler.
type FlowSettings =
    {
        Method: OdeMethod
        /// The sampler integrates from T down to Eps.
        Eps: float
        /// Finish with Tweedie's denoising step at eps (one more model evaluation).
        Denoise: bool
    }

/// A latent and the number of model evaluations it took to compute it.
type EncodeResult = { Latent: Tensor; Nfe: int }

[<RequireQualifiedAccess>]
module OdeMethod =
    /// Adaptive Dormand-Prince 5(4) with the given tolerances and the default settings otherwise.
    let dopri5 (rtol: float) (atol: float) = OdeMethod.Dopri5 { AdaptiveOde.defaults with Rtol = rtol; Atol = atol }

    /// A fixed-step solver on a uniform grid.
    let fixedStep (solver: OdeSolver) (steps: int) = OdeMethod.FixedStep(solver, TimeGrid.Uniform, steps)

    /// Display name.
    let name (m: OdeMethod) =
        match m with
        | OdeMethod.FixedStep(s, _, n) -> sprintf "%s, %d steps" (OdeSolver.name s) n
        | OdeMethod.Dopri5 a -> sprintf "Dopri5 (rtol %g, atol %g, %A)" a.Rtol a.Atol a.Control

    /// Check the method's settings (throws ArgumentException naming the bad one).
    let validate (m: OdeMethod) =
        match m with
        | OdeMethod.FixedStep(_, grid, steps) ->
            match grid with
            | TimeGrid.Explicit _ -> ()
            | _ -> Check.positiveInt "steps" steps
        | OdeMethod.Dopri5 a -> AdaptiveOde.validate a

    /// A batch-shared-time view of a per-sample-time field (for the fixed-step solvers).
    let sharedTime (field: TimeField) : VectorField =
        fun x t ->
            use value = Tensors.scalar t // bound, so it outlives the native call (Scalars have finalizers)
            use tb = torch.full ([| x.shape.[0] |], value, dtype = x.dtype, device = x.device)
            field x tb

    /// Integrate x' = field(x, t) between sde.T and eps: downwards (T -> eps) when `downwards`,
    /// else upwards (eps -> T). Returns the end state (fresh; x is not modified) and the number of
    /// evaluations of the field.
    let integrate (sde: VpSde) (m: OdeMethod) (field: TimeField) (x: Tensor) (eps: float) (downwards: bool) : Tensor * int =
        validate m
        match m with
        | OdeMethod.FixedStep(solver, grid, steps) ->
            let ts = TimeGrid.points sde grid steps eps
            let ts = if downwards then ts else Array.rev ts
            use _noGrad = torch.no_grad ()
            OdeSolver.integrate solver (sharedTime field) x ts
        | OdeMethod.Dopri5 settings ->
            Check.finite "eps" eps
            if eps <= 0.0 || eps >= sde.T then
                Check.fail "eps" eps (sprintf "in (0, %g)" sde.T)
            let t0, t1 = if downwards then sde.T, eps else eps, sde.T
            let r = AdaptiveOde.integrate settings field x t0 t1
            r.State, r.Nfe

/// The probability-flow ODE dx/dt = -1/2 beta(t) (x + s(x, t)) of a model: sampling (latent ->
/// data), encoding (data -> latent), with any `OdeMethod`. `Sampler.probabilityFlow` is the
/// fixed-step sampler with a per-step observer; this module adds adaptive solvers and encoding.
[<RequireQualifiedAccess>]
module ProbabilityFlow =
    /// Defaults: the paper's ODE sampler, Dormand-Prince 5(4) at rtol = atol = 1e-5 with one step size
    /// for the whole batch (`StepControl.BatchGlobal`: on the 2-D mixture benchmark of docs/ode.md it
    /// needs fewer evaluations than per-sample control for the same accuracy), eps = 1e-3, no
    /// denoising. Choose `StepControl.PerSample` when a sample's result must not depend on its
    /// batch-mates.
    let defaults =
        { Method = OdeMethod.Dopri5 { AdaptiveOde.defaults with Control = StepControl.BatchGlobal }
          Eps = 1e-3
          Denoise = false }

    /// The score s(x, t) from a model output `out` at (x, t), t one time per batch element, with the
    /// coefficients computed on the tensors' device (no host round trip). Differentiable in x.
    let scoreFromOutput (sde: VpSde) (output: ModelOutput) (x: Tensor) (out: Tensor) (t: Tensor) : Tensor =
        match output with
        | ModelOutput.Score -> out.alias ()
        | ModelOutput.Noise ->
            use tb = Tensors.broadcastTime "t" t x
            use sigma = VpSde.sigma sde tb
            use neg = out.neg ()
            neg / sigma
        | ModelOutput.Data ->
            use scope = torch.NewDisposeScope()
            let tb = Tensors.broadcastTime "t" t x
            let sigma = VpSde.sigma sde tb
            let a = VpSde.alpha sde tb
            ((a * out - x) / sigma.square ()).MoveToOuterDisposeScope()

    /// The probability-flow drift at (x, t), t one time per batch element (a [B] tensor in x's dtype).
    /// Differentiable in x when gradients are enabled (the likelihood's divergence uses this).
    let drift (sde: VpSde) (model: Model) (x: Tensor) (t: Tensor) : Tensor =
        use scope = torch.NewDisposeScope()
        let out = Model.eval model x t
        let score = scoreFromOutput sde model.Output x out t
        (VpSde.probabilityFlowDrift sde score x t).MoveToOuterDisposeScope()

    /// The probability-flow vector field with one time per sample.
    let field (sde: VpSde) (model: Model) : TimeField = fun x t -> drift sde model x t

    /// The probability-flow vector field written into a buffer (the adaptive solver's stage): with
    /// score = ka x + kb out, the drift is p x + q out, p = -1/2 beta (1 + ka) and q = -1/2 beta kb,
    /// formed per sample as [B, 1, ...] tensors on the device, so the state-sized work is a copy, a
    /// scale and an addcmul into the buffer and no state-sized tensor is created besides the model's
    /// output. Not differentiable (the likelihood uses `field`).
    let fieldInto (sde: VpSde) (model: Model) : TimeFieldInto =
        fun x t k ->
            use scope = torch.NewDisposeScope()
            let out = Model.eval model x t
            let tb = Tensors.broadcastTime "t" t x
            let nb = Tensors.mulScalar (VpSde.beta sde tb) -0.5 // -beta / 2
            let p, q =
                match model.Output with
                | ModelOutput.Score -> nb, nb // ka = 0, kb = 1
                | ModelOutput.Noise -> nb, (nb / VpSde.sigma sde tb).neg_() // ka = 0, kb = -1 / sigma
                | ModelOutput.Data -> // ka = -1 / sigma^2, kb = alpha / sigma^2
                    let v = VpSde.sigma sde tb
                    v.mul_ (v) |> ignore
                    let nbv = nb / v
                    nb - nbv, nbv * VpSde.alpha sde tb
            k.copy_(x).mul_(p) |> ignore
            Kernel.addProduct k out q 1.0

    let private checkState (name: string) (x: Tensor) =
        Check.floating name x
        if x.dim () < 1L || x.shape.[0] < 1L then
            Check.fail name x.shape "a tensor with a batch dimension"

    let private checkEps (sde: VpSde) (eps: float) =
        Check.finite "eps" eps
        if eps <= 0.0 || eps >= sde.T then
            Check.fail "eps" eps (sprintf "in (0, %g)" sde.T)

    /// Sample (decode): integrate the probability-flow ODE from T down to eps starting at xT (a prior
    /// draw or an encoded latent; not modified), optionally finishing with Tweedie's denoising step.
    /// Runs without gradients.
    let sample (sde: VpSde) (model: Model) (settings: FlowSettings) (xT: Tensor) : SampleResult =
        Native.ensureLoaded ()
        checkState "xT" xT
        checkEps sde settings.Eps
        OdeMethod.validate settings.Method
        use _noGrad = torch.no_grad ()
        let x, nfe =
            match settings.Method with
            | OdeMethod.FixedStep(solver, grid, steps) ->
                // In place on one working copy (Sampler.flowInPlace): no tensor per step beyond the model's.
                let x = xT.clone ()
                x, Sampler.flowInPlace sde model solver (TimeGrid.points sde grid steps settings.Eps) x (fun _ _ -> ())
            | OdeMethod.Dopri5 a ->
                let r = AdaptiveOde.integrateInto a (fieldInto sde model) xT sde.T settings.Eps
                r.State, r.Nfe
        if settings.Denoise then
            let eps =
                match settings.Method with
                | OdeMethod.FixedStep(_, TimeGrid.Explicit ts, _) -> ts.[ts.Length - 1]
                | _ -> settings.Eps
            let d = Sampler.denoise sde model x eps
            x.Dispose()
            { Samples = d; Nfe = nfe + 1 }
        else
            { Samples = x; Nfe = nfe }

    /// Encode: integrate the probability-flow ODE from eps up to T starting at data x0 (not
    /// modified). `sample` with the same method and eps inverts it to within the solver's accuracy.
    /// Runs without gradients.
    let encode (sde: VpSde) (model: Model) (m: OdeMethod) (eps: float) (x0: Tensor) : EncodeResult =
        Native.ensureLoaded ()
        checkState "x0" x0
        checkEps sde eps
        OdeMethod.validate m
        use _noGrad = torch.no_grad ()
        let z, nfe =
            match m with
            | OdeMethod.FixedStep(solver, grid, steps) ->
                let z = x0.clone ()
                z, Sampler.flowInPlace sde model solver (Array.rev (TimeGrid.points sde grid steps eps)) z (fun _ _ -> ())
            | OdeMethod.Dopri5 a ->
                let r = AdaptiveOde.integrateInto a (fieldInto sde model) x0 eps sde.T
                r.State, r.Nfe
        { Latent = z; Nfe = nfe }
