namespace ScoreSde

open System
open TorchSharp

/// One step of the result of a stochastic update: the new sample and its mean (the sample before the
/// step's noise was added).
type StepResult = { Sample: Tensor; Mean: Tensor }

/// A step from time t down to s (s < t) that is linear in the score:
/// mean = A x + B score(x, t); sample = mean + NoiseStd z, z ~ N(0, I).
type StepCoefficients = { A: float; B: float; NoiseStd: float }

/// Predictors of the reverse-time SDE (Song et al. 2021, Sec. 4.2).
[<RequireQualifiedAccess>]
type Predictor =
    /// Euler-Maruyama on the reverse SDE: mean = x - [f - g^2 s] dt, noise g sqrt(dt).
    | EulerMaruyama
    /// Reverse diffusion: mean = (2 - sqrt(1 - beta_i)) x + beta_i s, noise sqrt(beta_i).
    | ReverseDiffusion
    /// Ancestral sampling (DDPM): mean = (x + beta_i s) / sqrt(1 - beta_i), noise sqrt(beta_i).
    | AncestralSampling
    /// No predictor: time advances without a model evaluation (corrector-only samplers, e.g. NCSN's
    /// annealed Langevin dynamics).
    | NoPredictor
    /// A custom linear-in-score step: coefficients sde t s for a step from t down to s.
    | Custom of name: string * coefficients: (VpSde -> float -> float -> StepCoefficients)

/// In-place linear updates shared by predictors, correctors and the diffusers-compatible step. Each is
/// a few fused tensor operations with host-scalar coefficients; the TorchSharp Scalars they pass are
/// disposed at once (a Scalar holds a native handle, and leaving it to the finaliser costs GC work on
/// every call).
module internal Kernel =
    /// x <- x * a, in place.
    let scale (x: Tensor) (a: float) =
        use sa = Tensors.scalar a
        x.mul_ (sa) |> ignore

    /// x <- x + alpha y, in place (one pass).
    let addScaled (x: Tensor) (y: Tensor) (alpha: float) =
        use s = Tensors.scalar alpha
        x.add_ (y, s) |> ignore

    /// x <- x + value t1 t2 (element-wise, t2 broadcast), in place (one pass).
    let addProduct (x: Tensor) (t1: Tensor) (t2: Tensor) (value: float) =
        use s = Tensors.scalar value
        x.addcmul_ (t1, t2, s) |> ignore

    /// x <- a x + b out, in place. Safe when out is x itself (element-wise full alias).
    let axpby (x: Tensor) (a: float) (out: Tensor) (b: float) =
        if b = 0.0 then
            if a <> 1.0 then
                scale x a
        elif a = 0.0 then
            x.copy_ (out) |> ignore
            scale x b
        elif a = 1.0 then
            addScaled x out b
        elif not (Fused.tryLinear x a x b out 0.0 null) then
            addScaled x out (b / a)
            scale x a

    /// x <- a x + b y + c z, in place: one pass on CPU tensors (`Fused`), else up to three. y and z
    /// may be the same tensor, but neither may be x.
    let addTwo (x: Tensor) (a: float) (y: Tensor) (b: float) (z: Tensor) (c: float) =
        if not (Fused.tryLinear x a x b y c z) then
            if a <> 1.0 then
                scale x a
            addScaled x y b
            addScaled x z c

    /// x <- a x + b out + c z, in place, with z freshly filled from the noise source (the noise term
    /// is skipped when c = 0): one pass after the draw on CPU tensors (`Fused`), else axpby then an
    /// add. Safe when out is x itself.
    let axpbyNoise (x: Tensor) (a: float) (out: Tensor) (b: float) (z: Tensor) (c: float) (noise: Noise) =
        if c = 0.0 then
            axpby x a out b
        else
            noise.Fill z
            if a = 0.0 || b = 0.0 || not (Fused.tryLinear x a x b out c z) then
                axpby x a out b
                addScaled x z c

    /// x <- x + c z, in place, with z freshly filled from the noise source (no-op when c = 0).
    let addNoise (x: Tensor) (z: Tensor) (c: float) (noise: Noise) =
        if c <> 0.0 then
            noise.Fill z
            addScaled x z c

    /// A fresh tensor a x + b out in as few passes as the coefficients allow (one when a is 0 or 1 or
    /// b is 0, two otherwise: out scaled into the new tensor, then x added with a as alpha). Neither
    /// input is modified. No intermediate tensor is created.
    let combine (a: float) (x: Tensor) (b: float) (out: Tensor) : Tensor =
        if b = 0.0 then
            use sa = Tensors.scalar a
            x.mul (sa)
        elif a = 0.0 then
            use sb = Tensors.scalar b
            out.mul (sb)
        elif a = 1.0 then
            use sb = Tensors.scalar b
            x.add (out, sb)
        else
            let m =
                use sb = Tensors.scalar b
                out.mul (sb)
            addScaled m x a
            m

    /// The mean a x + b out and the sample mean + c z of a step as two fresh tensors. z is drawn
    /// straight into the sample tensor, a new contiguous tensor shaped like x (exactly one draw of that
    /// shape, as torch.randn(shape) would make); then one fused pass writes both results (`Fused`, CPU
    /// tensors it accepts, a and b nonzero), or else the mean is formed by `combine` and the sample is
    /// scaled and shifted in place. Neither input is modified.
    let meanAndSample (a: float) (x: Tensor) (b: float) (out: Tensor) (c: float) (noise: Noise) : StepResult =
        let sample =
            if x.is_contiguous () then
                torch.empty_like (x)
            else
                torch.empty (x.shape, dtype = x.dtype, device = x.device)
        let mutable mean: Tensor = null
        try
            noise.Fill sample
            // (the device test only spares a mean buffer the kernel would refuse; Fused decides the rest)
            if a <> 0.0 && b <> 0.0 && x.device_type = DeviceType.CPU then
                mean <- torch.empty_like (sample)
                if not (Fused.tryMeanAndSample mean sample a x b out c) then
                    mean.Dispose()
                    mean <- null
            if isNull mean then
                mean <- combine a x b out
                scale sample c
                sample.add_ (mean) |> ignore
            { Sample = sample; Mean = mean }
        with _ ->
            sample.Dispose()
            if not (isNull mean) then
                mean.Dispose()
            reraise ()

[<RequireQualifiedAccess>]
module Predictor =
    /// The DDPM beta of the step [s, t], see `VpSde.intervalBeta`. On a uniform N-step grid it is
    /// beta(t) dt to first order, which is the paper's beta_i = beta(t) / N; unlike the paper's
    /// index convention it stays in (0, 1) for any grid, so few-step grids never produce NaN.
    let stepBeta (sde: VpSde) (t: float) (s: float) = VpSde.intervalBeta sde t s

    /// The coefficients of a step from t down to s.
    let coefficients (sde: VpSde) (predictor: Predictor) (t: float) (s: float) : StepCoefficients =
        let dt = t - s
        match predictor with
        | Predictor.EulerMaruyama ->
            let b = VpSde.betaAt sde t
            { A = 1.0 + 0.5 * b * dt; B = b * dt; NoiseStd = Math.Sqrt(b * dt) }
        | Predictor.ReverseDiffusion ->
            let bi = stepBeta sde t s
            { A = 2.0 - Math.Sqrt(1.0 - bi); B = bi; NoiseStd = Math.Sqrt bi }
        | Predictor.AncestralSampling ->
            let bi = stepBeta sde t s
            let r = 1.0 / Math.Sqrt(1.0 - bi)
            { A = r; B = bi * r; NoiseStd = Math.Sqrt bi }
        | Predictor.NoPredictor -> { A = 1.0; B = 0.0; NoiseStd = 0.0 }
        | Predictor.Custom(_, f) -> f sde t s

    /// Whether the predictor evaluates the model.
    let evaluatesModel (predictor: Predictor) =
        match predictor with
        | Predictor.NoPredictor -> false
        | _ -> true

    /// Display name.
    let name (predictor: Predictor) =
        match predictor with
        | Predictor.EulerMaruyama -> "Euler-Maruyama"
        | Predictor.ReverseDiffusion -> "reverse diffusion"
        | Predictor.AncestralSampling -> "ancestral sampling"
        | Predictor.NoPredictor -> "none"
        | Predictor.Custom(n, _) -> n

    /// Coefficients on (x, model output) of the step's mean: mean = ax x + aout out.
    let internal outputCoefficients (sde: VpSde) (predictor: Predictor) (output: ModelOutput) (t: float) (s: float) =
        let c = coefficients sde predictor t s
        let ka, kb = if c.B = 0.0 then 0.0, 0.0 else Model.scoreCoefficientsAt sde output t
        c.A + c.B * ka, c.B * kb, c.NoiseStd

    /// One predictor step from t down to s, in place on x (the sampler's own buffer), reusing z as
    /// the noise buffer. `withNoise = false` returns the mean (the final denoising step).
    /// Returns the number of model evaluations (0 or 1).
    let stepInPlace
        (sde: VpSde)
        (predictor: Predictor)
        (model: Model)
        (x: Tensor)
        (tBatch: Tensor)
        (z: Tensor)
        (noise: Noise)
        (t: float)
        (s: float)
        (withNoise: bool)
        : int =
        if not (evaluatesModel predictor) then
            0
        else
            let ax, aout, std = outputCoefficients sde predictor model.Output t s
            use scope = torch.NewDisposeScope()
            let out = Model.eval model x tBatch
            if withNoise then Kernel.axpbyNoise x ax out aout z std noise else Kernel.axpby x ax out aout
            1

    /// One step on fresh tensors with given coefficients: sample i has mean = ax x + aout out and
    /// sample = mean + std z for (ax, aout, std) = cs.[i] (an array of length 1 applies to the whole
    /// batch). x and out are not modified.
    ///
    /// When every sample shares its coefficients (the usual case), they are host scalars and the step
    /// creates exactly the two result tensors (`Kernel.meanAndSample`: a noise draw into the sample,
    /// then one fused pass on CPU tensors). Per-sample steps use [B, 1, ...] coefficient tensors
    /// instead.
    let stepWithCoefficients (cs: (float * float * float)[]) (out: Tensor) (x: Tensor) (noise: Noise) : StepResult =
        let c0 = cs.[0]
        if cs |> Array.forall (fun c -> c = c0) then
            let ax, aout, std = c0
            Kernel.meanAndSample ax x aout out std noise
        else
            use scope = torch.NewDisposeScope()
            let coef (pick: float * float * float -> float) = Tensors.perSample (cs |> Array.map pick) x
            let mean = x * coef (fun (a, _, _) -> a)
            Kernel.addProduct mean out (coef (fun (_, b, _) -> b)) 1.0
            let sample = torch.empty (x.shape, dtype = x.dtype, device = x.device)
            noise.Fill sample
            sample.mul_(coef (fun (_, _, c) -> c)).add_(mean) |> ignore
            { Sample = sample.MoveToOuterDisposeScope(); Mean = mean.MoveToOuterDisposeScope() }

    /// One predictor step on fresh tensors from a model output that was already computed (manual
    /// stepping, as in diffusers' schedulers): sample i steps from ts.[i] down to ss.[i] (arrays of
    /// length 1 apply to the whole batch). x and out are not modified. The tensors are formed by
    /// `stepWithCoefficients`.
    let stepWithOutput
        (sde: VpSde)
        (predictor: Predictor)
        (output: ModelOutput)
        (out: Tensor)
        (x: Tensor)
        (ts: float[])
        (ss: float[])
        (noise: Noise)
        : StepResult =
        stepWithCoefficients (Array.map2 (fun t s -> outputCoefficients sde predictor output t s) ts ss) out x noise

    /// One predictor step from t down to s on a fresh tensor (x is not modified). The model is
    /// evaluated at (x, t) unless the predictor does not need it.
    let step (sde: VpSde) (predictor: Predictor) (model: Model) (x: Tensor) (t: float) (s: float) (noise: Noise) : StepResult =
        use scope = torch.NewDisposeScope()
        let mean = x.clone ()
        if evaluatesModel predictor then
            let ax, aout, _ = outputCoefficients sde predictor model.Output t s
            let tb = Tensors.fullTime x.shape.[0] t x.dtype x.device
            let out = Model.eval model x tb
            Kernel.axpby mean ax out aout
        let c = coefficients sde predictor t s
        let sample = mean.clone ()
        let z = torch.empty_like (x)
        Kernel.addNoise sample z c.NoiseStd noise
        { Sample = sample.MoveToOuterDisposeScope(); Mean = mean.MoveToOuterDisposeScope() }
