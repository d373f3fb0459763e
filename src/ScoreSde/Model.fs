namespace ScoreSde

open System
open TorchSharp

/// What a model's output means.
[<RequireQualifiedAccess>]
type ModelOutput =
    /// eps(x, t): the noise that was added, x_t = alpha_t x_0 + sigma_t eps. Score = -eps / sigma_t.
    | Noise
    /// The score grad_x log p_t(x) itself.
    | Score
    /// x_0(x, t): a prediction of the clean data. Score = (alpha_t x_0 - x) / sigma_t^2.
    | Data

/// A score-based model: a function of (x, t), t holding one value per batch element, and what its
/// output means. The model must not modify x in place (samplers pass their state buffer).
type Model = { Forward: Tensor -> Tensor -> Tensor; Output: ModelOutput }

[<RequireQualifiedAccess>]
module Model =
    /// A model returning a noise prediction eps(x, t) (the default for diffusion models).
    let noise (f: Tensor -> Tensor -> Tensor) = { Forward = f; Output = ModelOutput.Noise }

    /// A model returning the score directly.
    let score (f: Tensor -> Tensor -> Tensor) = { Forward = f; Output = ModelOutput.Score }

    /// A model returning a data prediction x_0(x, t).
    let data (f: Tensor -> Tensor -> Tensor) = { Forward = f; Output = ModelOutput.Data }

    /// Evaluate the model and check its output: a tensor shaped like x, floating-point. An output of
    /// another floating-point precision than x (float16, bfloat16, float64 for a float32 state, ...) is
    /// converted to x's dtype, so every sampler, the likelihood, encoding and the diffusers-style steps
    /// compute in the state's dtype; a non-floating output is an InvalidOperationException naming both
    /// dtypes. Call it inside a dispose scope: the conversion's source is then disposed with the scope.
    let eval (model: Model) (x: Tensor) (t: Tensor) : Tensor =
        let out = model.Forward x t
        if isNull out then
            raise (InvalidOperationException("The model returned null; it must return a tensor shaped like x."))
        if not (Check.shapesEqual out x) then
            raise (
                InvalidOperationException(
                    sprintf
                        "The model returned shape %s for input shape %s; it must return a tensor shaped like x."
                        (Check.shapeText out.shape)
                        (Check.shapeText x.shape)
                )
            )
        Check.outputDtype "The model's output" out x

    /// Host coefficients (a, b) with score = a x + b out, for a time shared by the whole batch.
    let inline scoreCoefficientsAt (sde: Sde) (output: ModelOutput) (t: float) : float * float =
        match output with
        | ModelOutput.Score -> 0.0, 1.0
        | ModelOutput.Noise -> 0.0, -1.0 / Sde.sigmaAt sde t
        | ModelOutput.Data ->
            let v = Sde.varianceAt sde t
            -1.0 / v, Sde.alphaAt sde t / v

    /// The tensor twin of `scoreCoefficientsAt`: (ka, kb) with score = ka x + kb out for a time tensor t
    /// (element-wise; broadcast it over x first). ka is None where it is zero (noise and score outputs).
    let scoreCoefficients (sde: Sde) (output: ModelOutput) (t: Tensor) : Tensor option * Tensor =
        match output with
        | ModelOutput.Score -> None, torch.ones_like (t)
        | ModelOutput.Noise ->
            use s = Sde.sigma sde t
            let kb = s.reciprocal ()
            kb.neg_ () |> ignore
            None, kb
        | ModelOutput.Data ->
            use v = Sde.variance sde t
            use a = Sde.alpha sde t
            let ka = v.reciprocal ()
            ka.neg_ () |> ignore
            Some ka, a.div (v)

    /// The score s(x, t) from a model output `out` at (x, t), t 0-d or one time per batch element, with
    /// the coefficients computed on the tensors' device (no host round trip). Differentiable in x.
    let scoreFromOutput (sde: Sde) (output: ModelOutput) (x: Tensor) (out: Tensor) (t: Tensor) : Tensor =
        match output with
        | ModelOutput.Score -> out.alias ()
        | _ ->
            use scope = torch.NewDisposeScope()
            let tb = Tensors.broadcastTime "t" t x
            let ka, kb = scoreCoefficients sde output tb
            let s = kb.mul (out)
            let s =
                match ka with
                | Some ka ->
                    use one = Tensors.scalar 1.0
                    s.addcmul_ (ka, x, one)
                | None -> s
            s.MoveToOuterDisposeScope()

    /// Host coefficients (a, b) with eps = a x + b out.
    let noiseCoefficientsAt (sde: Sde) (output: ModelOutput) (t: float) : float * float =
        match output with
        | ModelOutput.Noise -> 0.0, 1.0
        | ModelOutput.Score -> 0.0, -(Sde.sigmaAt sde t)
        | ModelOutput.Data ->
            let s = Sde.sigmaAt sde t
            1.0 / s, -(Sde.alphaAt sde t) / s

    /// Host coefficients (a, b) with x_0 = a x + b out.
    let dataCoefficientsAt (sde: Sde) (output: ModelOutput) (t: float) : float * float =
        match output with
        | ModelOutput.Data -> 0.0, 1.0
        | ModelOutput.Noise ->
            let a = Sde.alphaAt sde t
            1.0 / a, -(Sde.sigmaAt sde t) / a
        | ModelOutput.Score ->
            let a = Sde.alphaAt sde t
            1.0 / a, Sde.varianceAt sde t / a

    /// a x + b out, with (a, b) from host coefficients of t (per sample when t varies over the batch).
    let private combine (x: Tensor) (out: Tensor) (t: Tensor) (coefficients: float -> float * float) : Tensor =
        let ts = Tensors.readHost t
        if Tensors.allEqual ts then
            let a, b = coefficients ts.[0]
            // out * b, then + a x in place: one result tensor. The Scalars are bound for the duration
            // of the native calls (an inline Scalar can be finalised while the call still uses it).
            use sb = Tensors.scalar b
            let r = out.mul (sb)
            if a <> 0.0 then
                use sa = Tensors.scalar a
                r.add_ (x, sa) |> ignore
            r
        else
            let cs = ts |> Array.map coefficients
            use scope = torch.NewDisposeScope()
            (Tensors.add (Tensors.perSample (Array.map fst cs) x * x) (Tensors.perSample (Array.map snd cs) x * out))
                .MoveToOuterDisposeScope()

    // Model outputs are disposed through a local dispose scope: whatever the model created during the
    // call goes, while tensors it returns from elsewhere (x itself, a cached tensor) are left alone.
    let private convert (x: Tensor) (t: Tensor) (model: Model) coefficients : Tensor =
        use scope = torch.NewDisposeScope()
        let out = eval model x t
        (combine x out t coefficients).MoveToOuterDisposeScope()

    /// The score at (x, t) (t 0-d or one value per batch element), converted from the model's output.
    let scoreOf (sde: Sde) (model: Model) (x: Tensor) (t: Tensor) : Tensor = convert x t model (scoreCoefficientsAt sde model.Output)

    /// The noise prediction at (x, t).
    let noiseOf (sde: Sde) (model: Model) (x: Tensor) (t: Tensor) : Tensor = convert x t model (noiseCoefficientsAt sde model.Output)

    /// The data prediction x_0 at (x, t).
    let dataOf (sde: Sde) (model: Model) (x: Tensor) (t: Tensor) : Tensor = convert x t model (dataCoefficientsAt sde model.Output)

    /// Drift of the reverse-time SDE at (x, t) from a model: f(x, t) - g(t)^2 s(x, t) (t 0-d or one
    /// value per batch element). Its diffusion is g(t), as in the forward SDE.
    let reverseDrift (sde: Sde) (model: Model) (x: Tensor) (t: Tensor) : Tensor =
        use score = scoreOf sde model x t
        Sde.reverseDrift sde score x t

    /// Drift of the probability-flow ODE at (x, t) from a model: f(x, t) - 1/2 g(t)^2 s(x, t).
    let probabilityFlowDrift (sde: Sde) (model: Model) (x: Tensor) (t: Tensor) : Tensor =
        use score = scoreOf sde model x t
        Sde.probabilityFlowDrift sde score x t
