namespace ScoreSde

open System
open TorchSharp

/// A step from time t down to s (s < t) that is linear in the score:
/// mean = A x + B score(x, t); sample = mean + NoiseStd z, z ~ N(0, I).
type StepCoefficients = { A: float; B: float; NoiseStd: float }

/// Predictors of the reverse-time SDE (Song et al. 2021, Sec. 4.2).
[<RequireQualifiedAccess>]
type Predictor =
    /// Euler-Maruyama on the reverse SDE: mean = x - [f - g^2 s] dt, noise g sqrt(dt).
    | EulerMaruyama
    /// Reverse diffusion through the SDE's discretisation (VP: mean = (2 - sqrt(1 - beta_i)) x + beta_i s,
    /// noise sqrt(beta_i); VE: mean = x + (sigma_i^2 - sigma_(i-1)^2) s; sub-VP: Euler-Maruyama).
    | ReverseDiffusion
    /// Ancestral sampling (VP: DDPM, mean = (x + beta_i s) / sqrt(1 - beta_i), noise sqrt(beta_i); VE:
    /// SMLD; sub-VP: the Gaussian posterior at Tweedie's x_0, see `Sde.ancestralAt`).
    | AncestralSampling
    /// No predictor: time advances without a model evaluation (corrector-only samplers, e.g. NCSN's
    /// annealed Langevin dynamics).
    | NoPredictor
    /// A custom linear-in-score step: coefficients sde t s for a step from t down to s.
    | Custom of name: string * coefficients: (Sde -> float -> float -> StepCoefficients)

[<RequireQualifiedAccess>]
module Predictor =
    /// The coefficients of a step from t down to s (dt = t - s), from the SDE's own formulas:
    /// Euler-Maruyama on the reverse SDE, mean = (1 - f(t) dt) x + g(t)^2 dt s with noise g(t) sqrt(dt);
    /// reverse diffusion through the SDE's discretisation x_t = r x_s + sqrt(v) z of the interval
    /// (`Sde.discretisationAt`: DDPM for VP, SMLD for VE, Euler-Maruyama for sub-VP), mean
    /// = (2 - r) x + v s with noise sqrt(v); ancestral sampling as `Sde.ancestralAt`. On any grid the
    /// discrete steps use the interval's own beta_i (or sigma_i^2 - sigma_(i-1)^2), which stays valid for
    /// few-step grids where the paper's index convention would give NaN.
    let coefficients (sde: Sde) (predictor: Predictor) (t: float) (s: float) : StepCoefficients =
        match predictor with
        | Predictor.EulerMaruyama ->
            let dt = t - s
            let g2 = Sde.diffusionSquaredAt sde t * dt
            { A = 1.0 - Sde.driftAt sde t * dt; B = g2; NoiseStd = Math.Sqrt g2 }
        | Predictor.ReverseDiffusion ->
            let r, v = Sde.discretisationAt sde t s
            { A = 2.0 - r; B = v; NoiseStd = Math.Sqrt v }
        | Predictor.AncestralSampling ->
            let a, b, c = Sde.ancestralAt sde t s
            { A = a; B = b; NoiseStd = c }
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
    let internal outputCoefficients (sde: Sde) (predictor: Predictor) (output: ModelOutput) (t: float) (s: float) =
        let c = coefficients sde predictor t s
        let ka, kb = if c.B = 0.0 then 0.0, 0.0 else Model.scoreCoefficientsAt sde output t
        c.A + c.B * ka, c.B * kb, c.NoiseStd

    /// One predictor step from t down to s, in place on x (the sampler's own buffer), reusing z as
    /// the noise buffer. `withNoise = false` returns the mean (the final denoising step).
    /// Returns the number of model evaluations (0 or 1).
    let stepInPlace
        (sde: Sde)
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
            Tensors.addInPlace (sample.mul_ (coef (fun (_, _, c) -> c))) mean |> ignore
            { Sample = sample.MoveToOuterDisposeScope(); Mean = mean.MoveToOuterDisposeScope() }

    /// One predictor step on fresh tensors from a model output that was already computed (manual
    /// stepping, as in diffusers' schedulers): sample i steps from ts.[i] down to ss.[i] (arrays of
    /// length 1 apply to the whole batch). x and out are not modified. The tensors are formed by
    /// `stepWithCoefficients`.
    let stepWithOutput
        (sde: Sde)
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
    let step (sde: Sde) (predictor: Predictor) (model: Model) (x: Tensor) (t: float) (s: float) (noise: Noise) : StepResult =
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
