namespace ScoreSde

open System
open System.Diagnostics
open TorchSharp

/// How the denoising score-matching loss weights the times t ~ U(eps, 1).
[<RequireQualifiedAccess>]
type LossWeighting =
    /// The noise-prediction loss |eps(x_t, t) - z|^2 (= |sigma_t s + z|^2): every time counts alike.
    | Noise
    /// Likelihood weighting g(t)^2 |s + z / sigma_t|^2 = g(t)^2 / sigma_t^2 |eps(x_t, t) - z|^2, which
    /// makes the loss a bound on the negative log-likelihood. The weight grows like 1 / t near
    /// t = eps, so the loss has a much larger variance: use a smaller learning rate.
    | Likelihood

/// Settings of denoising score-matching training.
type TrainSettings =
    {
        /// Optimiser steps.
        Steps: int
        /// Training points per step (drawn with replacement).
        BatchSize: int
        /// Adam's peak learning rate.
        LearningRate: float
        /// Steps of linear learning-rate warm-up from LearningRate / WarmupSteps.
        WarmupSteps: int
        /// Decay the learning rate to zero along a half cosine over the run (after warm-up).
        CosineDecay: bool
        /// Times are drawn from U(Eps, 1).
        Eps: float
        Weighting: LossWeighting
        /// Decay of the exponential moving average of the weights; step k uses
        /// min(EmaDecay, (1 + k) / (10 + k)) so that short runs are not dominated by the initial weights.
        EmaDecay: float
        /// Clip the global gradient norm to this value (None: no clipping).
        GradClip: float option
        /// Called after every step with the step index (0-based) and that step's loss.
        Observer: (int -> float -> unit) option
    }

/// What a training run produced.
type TrainResult =
    {
        /// The exponential moving average of the weights: the network to sample with. A fresh
        /// module owned by the caller (dispose it when done).
        Ema: ScoreNet
        /// The loss of every step (of the batch it was computed on).
        Losses: float[]
        /// Wall-clock seconds spent in the training loop.
        Seconds: float
    }

    /// Optimiser steps per second.
    member r.StepsPerSecond = float r.Losses.Length / r.Seconds

/// Denoising score matching for the continuous SDEs (Song et al. 2021, Eq. 7): with t ~ U(eps, 1),
/// z ~ N(0, I) and x_t = alpha_t x_0 + sigma_t z with the SDE's marginal, fit eps(x_t, t) to z with Adam.
[<RequireQualifiedAccess>]
module Training =
    /// Defaults that fit the built-in 2-D datasets in about a minute on two CPU cores.
    let defaults =
        { Steps = 5000
          BatchSize = 512
          LearningRate = 5e-3
          WarmupSteps = 100
          CosineDecay = true
          Eps = 1e-5
          Weighting = LossWeighting.Noise
          EmaDecay = 0.999
          GradClip = Some 1.0
          Observer = None }

    /// Validate settings; every failure names the field.
    let validate (settings: TrainSettings) =
        Check.positiveInt "Steps" settings.Steps
        Check.positiveInt "BatchSize" settings.BatchSize
        Check.positive "LearningRate" settings.LearningRate
        Check.nonNegativeInt "WarmupSteps" settings.WarmupSteps
        Check.finite "Eps" settings.Eps
        if settings.Eps <= 0.0 || settings.Eps >= 1.0 then
            Check.fail "Eps" settings.Eps "in (0, 1)"
        Check.finite "EmaDecay" settings.EmaDecay
        if settings.EmaDecay < 0.0 || settings.EmaDecay >= 1.0 then
            Check.fail "EmaDecay" settings.EmaDecay "in [0, 1)"
        settings.GradClip |> Option.iter (Check.positive "GradClip")

    /// Per-sample coefficients of times t (host doubles): alpha_t, sigma_t and the loss weight
    /// (1, or g(t)^2 / sigma_t^2 for likelihood weighting).
    let coefficients (sde: Sde) (weighting: LossWeighting) (t: float[]) =
        let alpha = t |> Array.map (Sde.alphaAt sde)
        let sigma = t |> Array.map (Sde.sigmaAt sde)
        let weight =
            match weighting with
            | LossWeighting.Noise -> None
            | LossWeighting.Likelihood -> Some(Array.map2 (fun tt s -> Sde.diffusionSquaredAt sde tt / (s * s)) t sigma)
        alpha, sigma, weight

    /// The denoising score-matching loss of a noise-prediction network on clean data x0 [B, ...] at
    /// times t [B] with noise z (shaped like x0): x_t = alpha_t x0 + sigma_t z, and the loss is the
    /// mean over the batch of the per-sample mean over coordinates of w(t) (eps(x_t, t) - z)^2.
    /// Differentiable; x0, t and z are not modified. The per-sample coefficients are computed on the
    /// host in float64 (no TorchSharp Scalars, which have finalizers, in the training loop).
    let loss (sde: Sde) (weighting: LossWeighting) (net: Tensor -> Tensor -> Tensor) (x0: Tensor) (t: Tensor) (z: Tensor) : Tensor =
        Check.sameShape "z" z x0 "x0"
        if t.numel () <> x0.shape.[0] then
            Check.fail "t" t.shape (sprintf "one time per batch element (%d)" x0.shape.[0])
        use scope = torch.NewDisposeScope()
        let alpha, sigma, weight = coefficients sde weighting (Tensors.toHost t)
        let xt = Tensors.add (Tensors.perSample alpha x0 * x0) (Tensors.perSample sigma x0 * z)
        let pred = net xt t
        Check.sameShape "net output" pred x0 "x0"
        let perSample = (Tensors.square (pred - z)).reshape([| x0.shape.[0]; -1L |]).mean([| 1L |])
        let weighted =
            match weight with
            | None -> perSample
            | Some w -> perSample * torch.tensor (w, dtype = perSample.dtype, device = perSample.device)
        weighted.mean().MoveToOuterDisposeScope()

    /// The learning rate of step k (0-based): linear warm-up, then constant or a half cosine to zero.
    let learningRate (settings: TrainSettings) (k: int) =
        let warm = if settings.WarmupSteps > 0 then min 1.0 (float (k + 1) / float settings.WarmupSteps) else 1.0
        let decay =
            if settings.CosineDecay then
                0.5 * (1.0 + Math.Cos(Math.PI * float k / float settings.Steps))
            else
                1.0
        settings.LearningRate * warm * decay

    /// Train `net` (updated in place) on `data` [N, Dim] with Adam; every random draw (batch
    /// indices, times, noise) comes from `generator`, so the same seed and network initialisation
    /// reproduce the run. Returns the EMA network, the losses and the time taken. `data` is not
    /// modified; it is moved to the network's device and dtype once.
    let train (sde: Sde) (settings: TrainSettings) (net: ScoreNet) (data: Tensor) (generator: torch.Generator) : TrainResult =
        Native.ensureLoaded ()
        Check.notNull "net" net
        Check.liveGenerator "generator" generator
        validate settings
        Check.floating "data" data
        if data.dim () <> 2L || data.shape.[1] <> int64 net.Config.Dim || data.shape.[0] < 1L then
            Check.fail "data" data.shape (sprintf "a [N, %d] tensor of N >= 1 points (the network's Dim)" net.Config.Dim)
        use train =
            use scope = torch.NewDisposeScope()
            data.detach().to_type(net.Dtype).``to``(net.Device).MoveToOuterDisposeScope()
        let n = train.shape.[0]
        let batch = int64 settings.BatchSize
        let ema = ScoreNet.copy net
        let parameters = net.parameters () |> Seq.toArray
        let emaParameters = ema.parameters () |> Seq.toArray
        use adam = new Adam(parameters)
        let noise = Noise.fromGenerator generator
        let losses = Array.zeroCreate settings.Steps
        let model (x: Tensor) (t: Tensor) = net.forward (x, t)
        let watch = Stopwatch.StartNew()
        net.train ()
        for k in 0 .. settings.Steps - 1 do
            use scope = torch.NewDisposeScope()
            let idx = torch.randint (0L, n, [| batch |], dtype = torch.int64, device = generator.device, generator = generator)
            let x0 = train.index_select (0L, idx.``to`` (net.Device))
            // t ~ U(Eps, 1): uniform draws from the generator, mapped on the host
            let u = torch.rand ([| batch |], dtype = torch.float64, device = generator.device, generator = generator)
            let times = Tensors.toHost u |> Array.map (fun v -> settings.Eps + (1.0 - settings.Eps) * v)
            let t = torch.tensor (times, dtype = net.Dtype, device = net.Device)
            let z = torch.empty_like (x0)
            noise.Fill z
            Gradients.zero parameters
            let l = loss sde settings.Weighting model x0 t z
            l.backward ()
            settings.GradClip |> Option.iter (Gradients.clipNorm parameters)
            adam.Step(learningRate settings k)
            let value = l.detach().to_type(torch.float64).item<float>()
            if Double.IsNaN value || Double.IsInfinity value then
                raise (
                    InvalidOperationException(
                        sprintf "Training diverged at step %d (loss %g); lower the learning rate (%g)." k value settings.LearningRate
                    )
                )
            losses.[k] <- value
            Ema.update emaParameters parameters (Ema.decayAt settings.EmaDecay k)
            settings.Observer |> Option.iter (fun f -> f k value)
        watch.Stop()
        net.eval ()
        ema.eval ()
        { Ema = ema; Losses = losses; Seconds = watch.Elapsed.TotalSeconds }
