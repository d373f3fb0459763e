namespace ScoreSde

open System
open TorchSharp

/// How the Langevin corrector measures |z| / |score| for its step size.
[<RequireQualifiedAccess>]
type LangevinNorm =
    /// One step size per sample, from that sample's own norms: samples never influence each other,
    /// so results do not depend on the batch.
    | PerSample
    /// The paper code's choice: norms averaged over the batch, one step size for all samples.
    | BatchMean

/// Settings of the Langevin corrector.
type LangevinSettings =
    { /// Target signal-to-noise ratio r (paper: 0.16 for VP).
      Snr: float
      /// Corrector steps per time point.
      Steps: int
      Norm: LangevinNorm }

/// Settings of annealed Langevin dynamics (NCSN).
type AnnealedLangevinSettings =
    { Snr: float
      Steps: int }

/// Correctors: Langevin MCMC at a fixed time (Song et al. 2021, Sec. 4.2 and Alg. 5).
[<RequireQualifiedAccess>]
type Corrector =
    | NoCorrector
    /// Step e = 2 alpha_i (r |z| / |s|)^2; mean = x + e s; x = mean + sqrt(2 e) z.
    | Langevin of LangevinSettings
    /// Step e = 2 alpha_i (r sigma_t)^2; same update.
    | AnnealedLangevin of AnnealedLangevinSettings

[<RequireQualifiedAccess>]
module Corrector =
    /// Langevin corrector with per-sample norms.
    let langevin (snr: float) (steps: int) =
        Corrector.Langevin { Snr = snr; Steps = steps; Norm = LangevinNorm.PerSample }

    /// Annealed Langevin corrector.
    let annealedLangevin (snr: float) (steps: int) =
        Corrector.AnnealedLangevin { Snr = snr; Steps = steps }

    /// Validate settings (snr positive and finite, steps at least 1).
    let validate (corrector: Corrector) =
        match corrector with
        | Corrector.NoCorrector -> ()
        | Corrector.Langevin s ->
            Check.positive "snr" s.Snr
            Check.positiveInt "correctorSteps" s.Steps
        | Corrector.AnnealedLangevin s ->
            Check.positive "snr" s.Snr
            Check.positiveInt "correctorSteps" s.Steps

    /// Number of model evaluations per time point.
    let evaluations (corrector: Corrector) =
        match corrector with
        | Corrector.NoCorrector -> 0
        | Corrector.Langevin s -> s.Steps
        | Corrector.AnnealedLangevin s -> s.Steps

    /// Display name.
    let name (corrector: Corrector) =
        match corrector with
        | Corrector.NoCorrector -> "none"
        | Corrector.Langevin _ -> "Langevin"
        | Corrector.AnnealedLangevin _ -> "annealed Langevin"

    /// alpha_i of the step from t down to s: 1 - beta_i of that interval.
    let stepAlpha (sde: VpSde) (t: float) (s: float) = 1.0 - VpSde.intervalBeta sde t s

    // Per-sample L2 norms of a [B, ...] tensor as [B, 1, ...] (broadcastable against it).
    let private rowNorms (v: Tensor) =
        let b = v.shape.[0]
        let flat = v.reshape([| b; -1L |])
        let n = torch.linalg.vector_norm(flat, 2.0, [| 1L |], false)
        let shape = Array.init (int (v.dim())) (fun i -> if i = 0 then b else 1L)
        n.reshape(shape)

    /// Langevin step sizes (before the 2 alpha_i factor), [B, 1, ...] or 0-d: (r |z| / |grad|)^2,
    /// zero where the score vanishes (the step size is undefined there).
    let private langevinStepSize (norm: LangevinNorm) (snr: float) (grad: Tensor) (z: Tensor) : Tensor =
        let g, n =
            match norm with
            | LangevinNorm.PerSample -> rowNorms grad, rowNorms z
            | LangevinNorm.BatchMean -> (rowNorms grad).mean(), (rowNorms z).mean()
        let e = (n / g * snr).square()
        torch.where(g.gt(torch.zeros_like(g)), e, torch.zeros_like(e))

    /// One corrector step at time t, in place on x, reusing z as noise buffer, with alpha_i = alphaI.
    /// `withNoise = false` leaves x at the step's mean.
    let private langevinStep (sde: VpSde) (model: Model) (x: Tensor) (tBatch: Tensor) (z: Tensor) (noise: Noise)
                             (t: float) (alphaI: float) (stepSize: Tensor -> Tensor -> Tensor) (withNoise: bool) =
        use scope = torch.NewDisposeScope()
        let out = Model.eval model x tBatch
        let ka, kb = Model.scoreCoefficientsAt sde model.Output t
        let grad = if ka = 0.0 then out * kb else out * kb + x * ka
        noise.Fill z
        let e = stepSize grad z * (2.0 * alphaI)
        x.addcmul_(e, grad, 1.0) |> ignore
        if withNoise then
            let amp = (e * 2.0).sqrt_()
            x.addcmul_(amp, z, 1.0) |> ignore

    /// One Langevin step on fresh tensors from a model output already computed at (x, t) (manual
    /// stepping): sample i is at time ts.[i] with alpha_i = alphas.[i] (arrays of length 1 apply to the
    /// whole batch). Noise is drawn after the model output, as in the paper's code. x and out are
    /// not modified.
    let langevinWithOutput (sde: VpSde) (settings: LangevinSettings) (output: ModelOutput) (out: Tensor) (x: Tensor)
                           (ts: float[]) (alphas: float[]) (noise: Noise) : StepResult =
        Check.positive "snr" settings.Snr
        use scope = torch.NewDisposeScope()
        let perSample (v: float[]) =
            if Tensors.allEqual v then torch.tensor(v.[0], dtype = x.dtype, device = x.device) else Tensors.perSample v x
        let ks = ts |> Array.map (Model.scoreCoefficientsAt sde output)
        let grad = perSample (Array.map fst ks) * x + perSample (Array.map snd ks) * out
        let z = Noise.drawLike noise x
        let e = langevinStepSize settings.Norm settings.Snr grad z * perSample (alphas |> Array.map (fun a -> 2.0 * a))
        let mean = x + e * grad
        let sample = mean + (e * 2.0).sqrt() * z
        { Sample = sample.MoveToOuterDisposeScope(); Mean = mean.MoveToOuterDisposeScope() }

    /// Run the corrector at time t for its configured number of steps, in place on x. `lastWithoutNoise`
    /// leaves x at the mean of the final step (used when the sampler's last update is a corrector).
    /// Returns the number of model evaluations.
    let correctInPlace (sde: VpSde) (corrector: Corrector) (model: Model) (x: Tensor) (tBatch: Tensor)
                       (z: Tensor) (noise: Noise) (t: float) (alphaI: float) (lastWithoutNoise: bool) : int =
        match corrector with
        | Corrector.NoCorrector -> 0
        | Corrector.Langevin s ->
            let stepSize = langevinStepSize s.Norm s.Snr
            for k in 1 .. s.Steps do
                langevinStep sde model x tBatch z noise t alphaI stepSize (not (lastWithoutNoise && k = s.Steps))
            s.Steps
        | Corrector.AnnealedLangevin s ->
            let sigma = VpSde.sigmaAt sde t
            let e = (s.Snr * sigma) ** 2.0
            let stepSize (grad: Tensor) (_: Tensor) = torch.full([||], e, dtype = grad.dtype, device = grad.device)
            for k in 1 .. s.Steps do
                langevinStep sde model x tBatch z noise t alphaI stepSize (not (lastWithoutNoise && k = s.Steps))
            s.Steps
