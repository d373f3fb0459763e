namespace ScoreSde

open System
open TorchSharp

/// The configuration of diffusers' `ScoreSdeVpScheduler`.
type DiffusersVpConfig =
    {
        /// Number of training timesteps (stored, unused by the mathematics, as in diffusers).
        NumTrainTimesteps: int
        BetaMin: float
        BetaMax: float
        /// End of the sampling interval: timesteps run from 1 down to this value.
        SamplingEps: float
    }

/// The semantics of diffusers' `ScoreSdeVpScheduler`, quirks included, expressed with the core's
/// predictor and corrector steps. The C# `ScoreSdeVpScheduler` is a thin shell over this module.
[<RequireQualifiedAccess>]
module DiffusersVp =
    /// diffusers' defaults: 2000 training timesteps, beta from 0.1 to 20, eps = 1e-3.
    let defaults = { NumTrainTimesteps = 2000; BetaMin = 0.1; BetaMax = 20.0; SamplingEps = 1e-3 }

    /// Validate a configuration (clear errors naming the field and the value).
    let validate (config: DiffusersVpConfig) =
        Check.positiveInt "numTrainTimesteps" config.NumTrainTimesteps
        VpSchedule.create config.BetaMin config.BetaMax |> ignore
        Check.finite "samplingEps" config.SamplingEps
        if config.SamplingEps <= 0.0 || config.SamplingEps >= 1.0 then
            Check.fail "samplingEps" config.SamplingEps "in (0, 1)"

    /// The SDE of a configuration.
    let sde (config: DiffusersVpConfig) = Sde.vp config.BetaMin config.BetaMax

    /// The timesteps of set_timesteps(n): linspace(1, samplingEps, n) as float32 on the device
    /// (torch's default dtype, as in diffusers).
    let timesteps (config: DiffusersVpConfig) (n: int) (device: torch.Device) : Tensor =
        Native.ensureLoaded ()
        Check.positiveInt "numInferenceSteps" n
        torch.linspace (1.0, config.SamplingEps, int64 n, dtype = torch.float32, device = device)

    // The output's name is the C# parameter's: score for StepPred, modelOutput for StepCorrect.
    let private checkStepInputs (outName: string) (out: Tensor) (x: Tensor) (t: Tensor) =
        Check.floating "x" x
        Check.notNull outName out
        if not (torch.is_floating_point out) then
            Check.fail outName out.dtype "a floating-point tensor (one of another precision than x is converted to x's dtype)"
        Check.notNull "t" t
        Check.sameShape outName out x "x"
        if x.dim () = 0L || x.size (0) = 0L then
            Check.fail "x" x.shape "a tensor with a batch dimension holding at least one sample"
        let n = t.numel ()
        if not (n = 1L || n = x.size (0)) then
            Check.fail "t" t.shape (sprintf "a scalar or one time per batch element (%d)" (x.size (0)))
        // Read t once on the host (straight from memory for a CPU tensor): the step's coefficients are
        // host scalars, per sample only when the times differ.
        let ts = Tensors.readHost t
        for i in 0 .. ts.Length - 1 do
            let v = ts.[i]
            if Double.IsNaN v || v <= 0.0 || v > 1.0 then
                Check.fail (sprintf "t[%d]" i) v "in (0, 1]"
        ts

    /// The coefficients (on x, on the model output, on the noise) of step_pred at a float32 time t,
    /// from the float32 operations diffusers performs, in its order: log_mean_coeff =
    /// -0.25 t^2 (beta_max - beta_min) - 0.5 t beta_min; std = sqrt(1 - exp(2 log_mean_coeff)) (not
    /// expm1: at t = 1e-3 the two differ by ~3e-4 relative in float32, and Python's numbers carry the
    /// naive form); beta_t = beta_min + t (beta_max - beta_min); diffusion = sqrt(beta_t);
    /// dt = -1 / numTimesteps; the Python scalars rounded to float32 as PyTorch does (dt only when x is
    /// float32 too: `drift * dt` runs in x's dtype). They combine as
    /// mean = x + (-0.5 beta_t x - diffusion^2 (-out / std)) dt and noise scale diffusion sqrt(-dt),
    /// folded here into mean = a x + b out (in float64 from the float32 values), so the fused kernel
    /// differs from Python's six element-wise operations by rounding of the final sums only. exp is
    /// .NET's (glibc's expf, correctly rounded nearly always); PyTorch's vectorised expf may round
    /// the other way (measured: 4.6% of float32 arguments), which near t = eps moves std by up to
    /// ~3e-4 relative. On the schedules' own timesteps (linspace(1, 1e-3, N), N = 2 to 2000 measured)
    /// that changes a step by at most 2e-7 of its largest value; at arbitrary small t, by up to ~3e-5.
    let float32StepCoefficients (config: DiffusersVpConfig) (numTimesteps: int) (xIsFloat32: bool) (t: float32) : float * float * float =
        let spread = float32 (config.BetaMax - config.BetaMin)
        let betaMin = float32 config.BetaMin
        let logMeanCoeff = -0.25f * (t * t) * spread - 0.5f * t * betaMin
        let std = MathF.Sqrt(1.0f - MathF.Exp(2.0f * logMeanCoeff))
        let betaT = betaMin + t * spread
        let diffusion = MathF.Sqrt betaT
        let dt = -1.0 / float numTimesteps
        let dtX = if xIsFloat32 then float (float32 dt) else dt
        let noiseScale = diffusion * float32 (Math.Sqrt(-dt))
        let d2 = diffusion * diffusion
        1.0 - 0.5 * float betaT * dtX, float d2 / float std * dtX, float noiseScale

    /// step_pred(score, x, t): one Euler-Maruyama step of the reverse SDE, exactly as diffusers does it:
    /// - `modelOutput` is treated as a noise prediction: score = -modelOutput / sigma_t;
    /// - the step is dt = 1 / numTimesteps (diffusers uses -1 / len(timesteps), not the grid spacing);
    /// - noise is drawn with x's shape and dtype after the mean is formed.
    /// The coefficients follow t's dtype, as in diffusers: a float32 t gets diffusers' float32
    /// arithmetic (`float32StepCoefficients`), so every step matches Python to ~1e-7 relative (max
    /// |difference| over max |Python's value|); a float64 t keeps float64 accuracy (sigma_t from
    /// expm1). Returns (sample, mean).
    let stepPred (config: DiffusersVpConfig) (numTimesteps: int) (modelOutput: Tensor) (x: Tensor) (t: Tensor) (noise: Noise) : StepResult =
        let ts = checkStepInputs "score" modelOutput x t
        // An output of another floating-point precision is converted to x's dtype, as in every sampler.
        Tensors.withDtypeOf "score" modelOutput x
        <| fun modelOutput ->
            if t.dtype = torch.float32 then
                let cs = ts |> Array.map (float32 >> float32StepCoefficients config numTimesteps (x.dtype = torch.float32))
                Predictor.stepWithCoefficients cs modelOutput x noise
            else
                let dt = 1.0 / float numTimesteps
                Predictor.stepWithOutput
                    (sde config)
                    Predictor.EulerMaruyama
                    ModelOutput.Noise
                    modelOutput
                    x
                    ts
                    (ts |> Array.map (fun v -> v - dt))
                    noise

    /// A Langevin corrector step (Song et al. 2021, Alg. 5) at time t with target signal-to-noise ratio
    /// `snr` and the given norms, treating `modelOutput` as a noise prediction like `stepPred`; alpha_i
    /// is taken from the interval [t - dt, t] with the same dt = 1 / numTimesteps. Returns (sample,
    /// mean).
    let stepCorrectWith
        (config: DiffusersVpConfig)
        (numTimesteps: int)
        (norm: LangevinNorm)
        (modelOutput: Tensor)
        (x: Tensor)
        (t: Tensor)
        (snr: float)
        (noise: Noise)
        : StepResult =
        let ts = checkStepInputs "modelOutput" modelOutput x t
        Check.positive "snr" snr
        let sde = sde config
        let dt = 1.0 / float numTimesteps
        let alphas = ts |> Array.map (fun v -> Corrector.stepAlpha sde v (max (v - dt) 0.0))
        Tensors.withDtypeOf "modelOutput" modelOutput x (fun modelOutput ->
            Corrector.langevinWithOutput sde { Snr = snr; Steps = 1; Norm = norm } ModelOutput.Noise modelOutput x ts alphas noise)

    /// `stepCorrectWith` with norms averaged over the batch, as the paper's code and diffusers'
    /// ScoreSdeVeScheduler.step_correct do.
    let stepCorrect
        (config: DiffusersVpConfig)
        (numTimesteps: int)
        (modelOutput: Tensor)
        (x: Tensor)
        (t: Tensor)
        (snr: float)
        (noise: Noise)
        =
        stepCorrectWith config numTimesteps LangevinNorm.BatchMean modelOutput x t snr noise

    /// add_noise: the forward marginal x_t = alpha_t x_0 + sigma_t noise.
    let addNoise (config: DiffusersVpConfig) (original: Tensor) (noise: Tensor) (t: Tensor) : Tensor =
        Check.floating "original" original
        Check.notNull "noise" noise
        Check.notNull "t" t
        Sde.perturb (sde config) original t noise
