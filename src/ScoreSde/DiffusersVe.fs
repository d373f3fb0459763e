namespace ScoreSde

open System
open TorchSharp

/// The configuration of diffusers' `ScoreSdeVeScheduler`.
type DiffusersVeConfig =
    {
        /// Number of training timesteps: the length of the tables the constructor sets.
        NumTrainTimesteps: int
        /// Target signal-to-noise ratio of the corrector.
        Snr: float
        SigmaMin: float
        SigmaMax: float
        /// End of the sampling interval: timesteps run from 1 down to this value.
        SamplingEps: float
        /// Corrector steps per time point (read by the sampling loop, not by the steps).
        CorrectSteps: int
    }

/// What diffusers' `set_timesteps` and `set_sigmas` set: the scheduler's tables. The tensors are
/// created by this module and never modified; a new schedule replaces them without disposing them.
type DiffusersVeSchedule =
    {
        /// linspace(1, eps, n), float32, on the device chosen in `setTimesteps`.
        Timesteps: Tensor
        /// sigma_min (sigma_max / sigma_min)^t for each timestep t, float32 on the CPU.
        Sigmas: Tensor
        /// exp(linspace(log sigma_min, log sigma_max, n)), float32 on the CPU.
        DiscreteSigmas: Tensor
        /// len(Timesteps).
        Steps: int
        /// DiscreteSigmas on the host (the steps read their sigmas from here).
        Discrete: float32[]
    }

/// The semantics of diffusers' `ScoreSdeVeScheduler` (the variance-exploding SDE of Song et al. 2021,
/// SMLD discretisation), reproduced to the dtype of every intermediate so that a loop seeded like the
/// Python one gives the same numbers. The C# `ScoreSdeVeScheduler` is a thin shell over this module.
[<RequireQualifiedAccess>]
module DiffusersVe =
    /// diffusers' defaults: 2000 training timesteps, snr 0.15, sigma from 0.01 to 1348, eps = 1e-5,
    /// one corrector step.
    let defaults =
        { NumTrainTimesteps = 2000
          Snr = 0.15
          SigmaMin = 0.01
          SigmaMax = 1348.0
          SamplingEps = 1e-5
          CorrectSteps = 1 }

    // sigma^2 is formed in float32: sigma_max must keep it finite there.
    let private largestSigma = Math.Sqrt(float Single.MaxValue)

    let private checkSigmas (sigmaMin: float) (sigmaMax: float) =
        Check.positive "sigmaMin" sigmaMin
        Check.finite "sigmaMax" sigmaMax
        if sigmaMax <= sigmaMin then
            Check.fail "sigmaMax" sigmaMax (sprintf "greater than sigmaMin (%g)" sigmaMin)
        if sigmaMax >= largestSigma then
            Check.fail "sigmaMax" sigmaMax "below 1.8e19 (its square must be a finite float32)"

    let private checkEps (eps: float) =
        Check.finite "samplingEps" eps
        if eps <= 0.0 || eps >= 1.0 then
            Check.fail "samplingEps" eps "in (0, 1)"

    /// Validate a configuration (clear errors naming the field and the value).
    let validate (config: DiffusersVeConfig) =
        Check.positiveInt "numTrainTimesteps" config.NumTrainTimesteps
        Check.positive "snr" config.Snr
        checkSigmas config.SigmaMin config.SigmaMax
        checkEps config.SamplingEps
        Check.nonNegativeInt "correctSteps" config.CorrectSteps

    /// set_timesteps: linspace(1, eps, n) as float32 (torch's default dtype) on the device.
    let timesteps (n: int) (eps: float) (device: torch.Device) : Tensor =
        Native.ensureLoaded ()
        Check.positiveInt "numInferenceSteps" n
        checkEps eps
        torch.linspace (1.0, eps, int64 n, dtype = torch.float32, device = device)

    /// The sigmas of set_sigmas: sigma_min (sigma_max / sigma_min)^t for each timestep, a float32 CPU
    /// tensor. As in diffusers each entry is one float32 power (the ratio is rounded to float32) times
    /// sigma_min rounded to float32.
    let sigmas (sigmaMin: float) (sigmaMax: float) (timesteps: Tensor) : Tensor =
        checkSigmas sigmaMin sigmaMax
        let ratio = float32 (sigmaMax / sigmaMin)
        let lo = float32 sigmaMin
        let values = Tensors.readHost timesteps |> Array.map (fun t -> lo * MathF.Pow(ratio, float32 t))
        torch.tensor (values, dtype = torch.float32)

    /// The discrete sigmas of set_sigmas(n): exp(linspace(log sigma_min, log sigma_max, n)) in float32
    /// on the CPU.
    let discreteSigmas (n: int) (sigmaMin: float) (sigmaMax: float) : Tensor =
        Native.ensureLoaded ()
        Check.positiveInt "numInferenceSteps" n
        checkSigmas sigmaMin sigmaMax
        use logs = torch.linspace (Math.Log sigmaMin, Math.Log sigmaMax, int64 n, dtype = torch.float32)
        logs.exp ()

    let private withSigmas (timesteps: Tensor) (n: int) (sigmaMin: float) (sigmaMax: float) =
        let discrete = discreteSigmas n sigmaMin sigmaMax
        { Timesteps = timesteps
          Sigmas = sigmas sigmaMin sigmaMax timesteps
          DiscreteSigmas = discrete
          Steps = int (timesteps.numel ())
          Discrete = Tensors.readHost discrete |> Array.map float32 }

    /// The tables the constructor sets: set_sigmas(numTrainTimesteps), which first sets the timesteps
    /// (there are none yet) to linspace(1, eps, numTrainTimesteps) on the CPU.
    let create (config: DiffusersVeConfig) : DiffusersVeSchedule =
        validate config
        let n = config.NumTrainTimesteps
        withSigmas (timesteps n config.SamplingEps torch.CPU) n config.SigmaMin config.SigmaMax

    /// set_timesteps(n, eps, device): new timesteps (eps defaults to the config's); the sigmas and
    /// discrete sigmas are kept, as in diffusers.
    let setTimesteps
        (config: DiffusersVeConfig)
        (schedule: DiffusersVeSchedule)
        (n: int)
        (eps: float option)
        (device: torch.Device)
        : DiffusersVeSchedule =
        let t = timesteps n (defaultArg eps config.SamplingEps) device
        { schedule with Timesteps = t; Steps = n }

    /// set_sigmas(n, sigmaMin, sigmaMax, eps): sigmas over the current timesteps and n discrete sigmas
    /// (unset bounds default to the config's). eps is validated but, as in diffusers, only used when
    /// no timesteps exist, which never happens after construction.
    let setSigmas
        (config: DiffusersVeConfig)
        (schedule: DiffusersVeSchedule)
        (n: int)
        (sigmaMin: float option)
        (sigmaMax: float option)
        (eps: float option)
        : DiffusersVeSchedule =
        Check.positiveInt "numInferenceSteps" n
        eps |> Option.iter checkEps
        withSigmas schedule.Timesteps n (defaultArg sigmaMin config.SigmaMin) (defaultArg sigmaMax config.SigmaMax)

    let private checkPair (modelOutput: Tensor) (sample: Tensor) =
        Check.notNull "modelOutput" modelOutput
        Check.notNull "sample" sample
        if sample.dtype <> torch.float32 && sample.dtype <> torch.float64 then
            Check.fail "sample" sample.dtype "a float32 or float64 tensor (convert half precision to float32 first)"
        // Any floating-point output: one of another precision is converted to the sample's dtype.
        if not (torch.is_floating_point modelOutput) then
            Check.fail
                "modelOutput"
                modelOutput.dtype
                "a floating-point tensor (one of another precision is converted to the sample's dtype)"
        if sample.dim () = 0L || sample.size (0) = 0L then
            Check.fail "sample" sample.shape "a tensor with a batch dimension holding at least one sample"
        Check.sameShape "modelOutput" modelOutput sample "sample"

    /// The per-sample diffusion of step_pred. The timestep becomes t * ones(B), float32 unless t is a
    /// float64 tensor with a dimension (torch's promotion); the index is (t (steps - 1)).long() in that
    /// dtype; g = (sigma^2 - adjacent^2)^0.5 with sigma^2 in float32 and the rest in that dtype.
    /// Returns (g, g^2) per element of the timestep as host doubles, and that dtype.
    let private diffusions (schedule: DiffusersVeSchedule) (timestep: Tensor) (batch: int64) =
        Check.notNull "timestep" timestep
        if timestep.dtype = torch.ScalarType.Bool || torch.is_complex timestep then
            Check.fail "timestep" timestep.dtype "a real-valued tensor"
        let n = timestep.numel ()
        if timestep.dim () > 1L || not (n = 1L || n = batch) then
            Check.fail "timestep" timestep.shape (sprintf "a scalar or one value per batch element (%d)" batch)
        let wide = timestep.dtype = torch.float64 && timestep.dim () = 1L
        let last = schedule.Steps - 1
        let d = schedule.Discrete
        let timeType = if wide then torch.float64 else torch.float32
        let coefficients =
            Tensors.readHost timestep
            |> Array.mapi (fun i t ->
                if Double.IsNaN t || t < 0.0 || t > 1.0 then
                    Check.fail (sprintf "timestep[%d]" i) t "in [0, 1]"
                let k = if wide then int (Math.Truncate(t * float last)) else int (MathF.Truncate(float32 t * float32 last))
                if k >= d.Length then
                    Check.fail
                        (sprintf "timestep[%d]" i)
                        t
                        (sprintf
                            "below %g: long(t (len(timesteps) - 1)) = %d indexes beyond the %d discrete sigmas (call SetSigmas with at least len(timesteps) = %d steps)"
                            (float d.Length / float last)
                            k
                            d.Length
                            schedule.Steps)
                let sigma2 = d.[k] * d.[k]
                if wide then
                    let below = if k = 0 then 0.0 else float d.[k - 1]
                    let g = Math.Sqrt(float sigma2 - below * below)
                    g, g * g
                else
                    let below = if k = 0 then 0.0f else d.[k - 1]
                    let g = MathF.Sqrt(sigma2 - below * below)
                    float g, float (g * g))
        coefficients, timeType

    /// step_pred(modelOutput, timestep, sample): one reverse-diffusion (SMLD) step of the VE SDE with
    /// the model output used as the score: mean = sample + g^2 modelOutput, prev = mean + g z with
    /// g^2 = sigma_i^2 - sigma_{i-1}^2 from consecutive discrete sigmas (sigma_{-1} = 0), i = long(t
    /// (len(timesteps) - 1)) per batch element, and z drawn with the sample's dtype after the mean.
    /// Results have the dtype torch's promotion gives in diffusers (float64 when the sample or a
    /// one-per-sample timestep is float64); an output of another floating-point precision is first
    /// converted to the sample's dtype, as in every sampler of the library. Returns (sample, mean); the inputs are not modified.
    let stepPred (schedule: DiffusersVeSchedule) (modelOutput: Tensor) (timestep: Tensor) (sample: Tensor) (noise: Noise) : StepResult =
        checkPair modelOutput sample
        let batch = sample.size (0)
        let gs, timeType = diffusions schedule timestep batch
        Tensors.withDtypeOf "modelOutput" modelOutput sample
        <| fun modelOutput ->
            let g, g2 = gs.[0]
            let sameDtype = modelOutput.dtype = sample.dtype && (timeType = torch.float32 || sample.dtype = torch.float64)
            if sameDtype && gs |> Array.forall (fun c -> c = gs.[0]) then
                Kernel.meanAndSample 1.0 sample g2 modelOutput g noise
            else
                // One coefficient per sample, in the time's dtype, and torch's promotion for the rest.
                use scope = torch.NewDisposeScope()
                let shape = Array.init (int (sample.dim ())) (fun i -> if i = 0 then batch else 1L)
                let coef (pick: float * float -> float) =
                    let v = Array.init (int batch) (fun i -> pick gs.[if gs.Length = 1 then 0 else i])
                    torch.tensor(v, dtype = timeType, device = sample.device).reshape(shape)
                let mean = Tensors.add sample (modelOutput.mul (coef snd))
                let z = Noise.drawLike noise sample
                let prev = Tensors.add mean (z.mul (coef fst))
                { Sample = prev.MoveToOuterDisposeScope(); Mean = mean.MoveToOuterDisposeScope() }

    // Per-row sums of squares in float64: one SIMD pass on an eligible CPU tensor, else tensor ops.
    let private rowSumSquares (t: Tensor) =
        match Fused.tryRowSumSquares t with
        | Some sums -> sums
        | None ->
            use scope = torch.NewDisposeScope()
            let rows = t.detach().to_type(torch.float64).reshape(t.size (0), -1L)
            Tensors.toHost (rows.mul(rows).sum(1L))

    // The batch mean of the per-row norms, each rounded to float32 as torch's float32 norm returns it.
    let private meanNorm32 (sums: float[]) =
        let mutable total = 0.0f
        for s in sums do
            total <- total + float32 (Math.Sqrt s)
        total / float32 sums.Length

    /// The corrector's step size e and noise scale (2 e)^0.5 as diffusers forms them: the batch means
    /// of the per-sample norms of the output (in its dtype) and of the float32 noise, e = 2 (snr
    /// |noise| / |output|)^2 rounded to float32. A vanishing output gives a zero step (diffusers would
    /// give inf or NaN); a non-finite one is an error.
    let private correctorStep (snr: float) (modelOutput: Tensor) (z: Tensor) =
        let outputSums = rowSumSquares modelOutput
        if outputSums |> Array.exists (fun s -> Double.IsNaN s || Double.IsInfinity s) then
            Check.fail "modelOutput" "NaN or infinite values" "finite"
        let noiseNorm = meanNorm32 (rowSumSquares z)
        let e =
            if outputSums |> Array.forall (fun s -> s = 0.0) then
                0.0f
            elif modelOutput.dtype = torch.float32 then
                let r = float32 snr * noiseNorm / meanNorm32 outputSums
                r * r * 2.0f
            else
                let r = float (float32 snr * noiseNorm) / (outputSums |> Array.averageBy Math.Sqrt)
                float32 (r * r * 2.0)
        if Single.IsInfinity e then
            Check.fail "modelOutput" "norms too small" "large enough for a finite float32 step size"
        e, MathF.Sqrt(e * 2.0f)

    /// step_correct(modelOutput, sample): one Langevin corrector step with the model output as the
    /// score and batch-averaged norms. The noise is drawn first, in float32 whatever the sample's dtype
    /// (as diffusers' randn_tensor without a dtype); then e = 2 (snr mean|z| / mean|output|)^2 (float32),
    /// mean = sample + e modelOutput, prev = mean + (2 e)^0.5 z. Returns (prev, mean): diffusers returns
    /// prev only. The inputs are not modified.
    let stepCorrect (config: DiffusersVeConfig) (modelOutput: Tensor) (sample: Tensor) (noise: Noise) : StepResult =
        checkPair modelOutput sample
        Tensors.withDtypeOf "modelOutput" modelOutput sample
        <| fun modelOutput ->
            let z = torch.empty (sample.shape, dtype = torch.float32, device = sample.device)
            let mutable mean: Tensor = null
            try
                noise.Fill z
                let e, c = correctorStep config.Snr modelOutput z
                let float32Pair = sample.dtype = torch.float32 && modelOutput.dtype = torch.float32
                // float32 on the CPU: the noise buffer becomes the sample, one fused pass writes both results
                let fused =
                    float32Pair
                    && sample.device_type = DeviceType.CPU
                    && (mean <- torch.empty_like (z)
                        Fused.tryMeanAndSample mean z 1.0 sample (float e) modelOutput (float c))
                if fused then
                    { Sample = z; Mean = mean }
                else
                    if not (isNull mean) then
                        mean.Dispose()
                    // torch's promotion: e modelOutput in the output's dtype, the noise term in float32
                    mean <-
                        (use product = Tensors.mulScalar modelOutput (float e)
                         Tensors.add sample product)
                    Kernel.scale z (float c)
                    if float32Pair then
                        Tensors.addInPlace z mean |> ignore
                        { Sample = z; Mean = mean }
                    else
                        let prev = Tensors.add mean z
                        z.Dispose()
                        { Sample = prev; Mean = mean }
            with _ ->
                z.Dispose()
                if not (isNull mean) then
                    mean.Dispose()
                reraise ()

    /// add_noise(original, noise, timesteps): original + noise sigma_i with sigma_i the discrete sigma
    /// at integer index timesteps[i] (one index, or one per batch element), broadcast over the
    /// trailing dimensions. Returns a new tensor; the inputs are not modified.
    let addNoise (schedule: DiffusersVeSchedule) (original: Tensor) (noise: Tensor) (timesteps: Tensor) : Tensor =
        Check.notNull "original" original
        Check.notNull "noise" noise
        Check.notNull "timesteps" timesteps
        for name, t in [ "original", original; "noise", noise ] do
            if t.dtype <> torch.float32 && t.dtype <> torch.float64 then
                Check.fail name t.dtype "a float32 or float64 tensor"
        if original.dim () = 0L then
            Check.fail "original" original.shape "a tensor with a batch dimension"
        Check.sameShape "noise" noise original "original"
        if timesteps.dtype = torch.ScalarType.Bool || not (torch.is_integral timesteps) then
            Check.fail "timesteps" timesteps.dtype "an integer tensor (indices into the discrete sigmas)"
        let batch = original.size (0)
        let n = timesteps.numel ()
        if timesteps.dim () > 1L || not (n = 1L || n = batch) then
            Check.fail "timesteps" timesteps.shape (sprintf "one index or one per batch element (%d)" batch)
        let d = schedule.Discrete
        let sigmaValues =
            Tensors.readHost timesteps
            |> Array.mapi (fun i v ->
                if v < 0.0 || v >= float d.Length then
                    Check.fail (sprintf "timesteps[%d]" i) (int64 v) (sprintf "an index in [0, %d]" (d.Length - 1))
                d.[int v])
        use scope = torch.NewDisposeScope()
        let shape = Array.init (int (original.dim ())) (fun i -> if i = 0 then int64 sigmaValues.Length else 1L)
        let s = torch.tensor(sigmaValues, dtype = torch.float32, device = original.device).reshape(shape)
        (Tensors.add (noise.mul (s)) original).MoveToOuterDisposeScope()
