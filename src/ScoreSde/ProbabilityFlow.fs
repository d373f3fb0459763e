namespace ScoreSde

open TorchSharp

/// The probability-flow ODE dx/dt = f(t) x - 1/2 g(t)^2 s(x, t) of a model. With a model output `out`
/// and score = ka x + kb out (`Model.scoreCoefficientsAt`), the field is linear in x and out:
/// F(x, t) = p x + q out with p = f + c ka and q = c kb, c = -g^2 / 2 (`Sde.probabilityFlowAt`). These
/// coefficients are formed here once, on the host and as tensors, and every flow solver uses them: the
/// fixed-step in-place steps, the adaptive solver's write-into field and the likelihood's divergence.
[<RequireQualifiedAccess>]
module ProbabilityFlow =
    /// (p, q) of the field F = p x + q out at a time shared by the batch (host doubles).
    let inline coefficientsAt (sde: Sde) (output: ModelOutput) (t: float) : float * float =
        let f, c = Sde.probabilityFlowAt sde t
        let ka, kb = Model.scoreCoefficientsAt sde output t
        f + c * ka, c * kb

    /// The tensor twin of `coefficientsAt`: (p, q) for a time tensor (element-wise: broadcast it over the
    /// state first, e.g. [B, 1, ...]), computed on its device.
    let coefficients (sde: Sde) (output: ModelOutput) (t: Tensor) : Tensor * Tensor =
        // No dispose scope of its own (the fields call this per evaluation): the intermediates are
        // disposed directly, and p and q on an exception.
        let f, c = Sde.probabilityFlowCoefficients sde t
        try
            match output with
            | ModelOutput.Score -> () // ka = 0, kb = 1: p = f, q = c
            | _ ->
                let ka, kb = Model.scoreCoefficients sde output t
                use kb = kb
                match ka with
                | Some ka ->
                    use ka = ka
                    use one = Tensors.scalar 1.0
                    f.addcmul_ (c, ka, one) |> ignore
                | None -> ()
                c.mul_ (kb) |> ignore
            f, c
        with _ ->
            f.Dispose()
            c.Dispose()
            reraise ()

    /// The field p x + q out from its coefficients (`coefficients`), as a fresh tensor.
    let internal ofCoefficients (p: Tensor) (q: Tensor) (x: Tensor) (out: Tensor) : Tensor =
        let r = p.mul (x)
        use one = Tensors.scalar 1.0
        r.addcmul_ (q, out, one)

    /// The field p x + q out from a model output at (x, t), t 0-d or one time per batch element, as a
    /// fresh tensor. Differentiable in x (through x and out) when gradients are enabled.
    let fromOutput (sde: Sde) (output: ModelOutput) (x: Tensor) (out: Tensor) (t: Tensor) : Tensor =
        use scope = torch.NewDisposeScope()
        let p, q = coefficients sde output (Tensors.broadcastTime "t" t x)
        (ofCoefficients p q x out).MoveToOuterDisposeScope()

    /// The field at (x, t), t one time per batch element (a [B] tensor in x's dtype), as a fresh tensor.
    let drift (sde: Sde) (model: Model) (x: Tensor) (t: Tensor) : Tensor =
        use scope = torch.NewDisposeScope()
        let out = Model.eval model x t
        (fromOutput sde model.Output x out t).MoveToOuterDisposeScope()

    /// The field with one time per sample.
    let field (sde: Sde) (model: Model) : TimeField = fun x t -> drift sde model x t

    /// The field written into a buffer (the adaptive solver's stage): p and q are [B, 1, ...] tensors on
    /// the device, so the state-sized work is a copy, a scale and an addcmul into the buffer and no
    /// state-sized tensor is created besides the model's output. Not differentiable (the likelihood
    /// uses `field`).
    let fieldInto (sde: Sde) (model: Model) : TimeFieldInto =
        fun x t k ->
            use scope = torch.NewDisposeScope()
            let out = Model.eval model x t
            let p, q = coefficients sde model.Output (Tensors.broadcastTime "t" t x)
            k.copy_(x).mul_(p) |> ignore
            Kernel.addProduct k out q 1.0

    /// The field with a time shared by the batch, from host coefficients (for the generic fixed-step
    /// solvers of `OdeSolver`).
    let sharedField (sde: Sde) (model: Model) : VectorField =
        fun (x: Tensor) (t: float) ->
            use tb = Tensors.fullTime x.shape.[0] t x.dtype x.device
            use scope = torch.NewDisposeScope()
            let out = Model.eval model x tb
            let p, q = coefficientsAt sde model.Output t
            (Kernel.combine p x q out).MoveToOuterDisposeScope()

    /// One fixed step from t to s, in place on x, with the host coefficients: Euler updates x alone,
    /// Heun also uses the stage buffer y, RK4 y and the accumulator acc (both shaped like x; unused ones
    /// may be null). `evaluate state t update` evaluates the model at (state, t) and passes its output
    /// to `update`. Safe for an output that is the state itself.
    let internal stepInPlace
        (sde: Sde)
        (output: ModelOutput)
        (solver: OdeSolver)
        (x: Tensor)
        (y: Tensor)
        (acc: Tensor)
        (t: float)
        (s: float)
        (evaluate: Tensor -> float -> (Tensor -> unit) -> unit)
        =
        let coefficients = coefficientsAt sde output
        // y <- x + c (p y + q out), with out possibly y itself (axpby is alias-safe).
        let stage (c: float) (p: float) (q: float) (out: Tensor) =
            if not (Fused.tryLinear y (c * p) y (c * q) out 1.0 x) then
                Kernel.axpby y (c * p) out (c * q)
                Tensors.addInPlace y x |> ignore
        let h = s - t
        match solver with
        | OdeSolver.Euler ->
            let p, q = coefficients t
            evaluate x t (fun out -> Kernel.axpby x (1.0 + h * p) out (h * q))
        | OdeSolver.Heun ->
            let p1, q1 = coefficients t
            y.copy_ (x) |> ignore
            evaluate x t (fun out -> Kernel.axpby y (1.0 + h * p1) out (h * q1))
            // x + h/2 (k1 + k2) with k1 = (y - x) / h: 0.5 x + (0.5 + h p2 / 2) y + (h q2 / 2) out2
            let p2, q2 = coefficients s
            evaluate y s (fun out -> Kernel.addTwo x 0.5 y (0.5 + 0.5 * h * p2) out (0.5 * h * q2))
        | OdeSolver.Rk4 ->
            let m = t + 0.5 * h
            let p1, q1 = coefficients t
            let pm, qm = coefficients m
            let p4, q4 = coefficients s
            // acc = k1; y = x + h/2 k1
            evaluate x t (fun out ->
                acc.copy_ (x) |> ignore
                Kernel.axpby acc p1 out q1)
            y.copy_ (x) |> ignore
            Kernel.addScaled y acc (0.5 * h)
            // acc += 2 k2; y = x + h/2 k2
            evaluate y m (fun out ->
                Kernel.addTwo acc 1.0 y (2.0 * pm) out (2.0 * qm)
                stage (0.5 * h) pm qm out)
            // acc += 2 k3; y = x + h k3
            evaluate y m (fun out ->
                Kernel.addTwo acc 1.0 y (2.0 * pm) out (2.0 * qm)
                stage h pm qm out)
            // acc += k4; x += h/6 acc
            evaluate y s (fun out -> Kernel.addTwo acc 1.0 y p4 out q4)
            Kernel.addScaled x acc (h / 6.0)

    /// Integrate through the time points (decreasing to sample, increasing to encode) with a fixed-step
    /// solver, in place on x (the caller's working buffer): `stepInPlace` per step, with the time buffer
    /// and the stage buffers allocated once, so nothing beyond the model's own tensors is created per
    /// step. `afterStep i t x` runs after step i, at time t. Returns the number of model evaluations.
    let internal integrateInPlace (sde: Sde) (model: Model) (solver: OdeSolver) (times: float[]) (x: Tensor) (afterStep: Observer) : int =
        use tb = torch.empty ([| x.shape.[0] |], dtype = x.dtype, device = x.device)
        use y = if solver = OdeSolver.Euler then null else torch.empty_like (x)
        use acc = if solver = OdeSolver.Rk4 then torch.empty_like (x) else null
        // What the model created during a call is disposed with the scope.
        let evaluate (state: Tensor) (t: float) (update: Tensor -> unit) =
            Tensors.fillHost tb t
            use scope = torch.NewDisposeScope()
            update (Model.eval model state tb)
        for i in 0 .. times.Length - 2 do
            stepInPlace sde model.Output solver x y acc times.[i] times.[i + 1] evaluate
            afterStep i times.[i + 1] x
        (times.Length - 1) * OdeSolver.evaluationsPerStep solver
