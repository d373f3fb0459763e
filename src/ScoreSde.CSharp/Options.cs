using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>Predictors of the reverse-time SDE.</summary>
public enum Predictor
{
    /// <summary>Euler-Maruyama on the reverse SDE.</summary>
    EulerMaruyama,
    /// <summary>Reverse diffusion (the paper's default for VP).</summary>
    ReverseDiffusion,
    /// <summary>Ancestral sampling (DDPM).</summary>
    AncestralSampling,
    /// <summary>No predictor: corrector-only sampling.</summary>
    None,
}

/// <summary>Correctors (Langevin MCMC at a fixed time).</summary>
public enum Corrector
{
    /// <summary>No corrector.</summary>
    None,
    /// <summary>Langevin dynamics with a step size set by the target signal-to-noise ratio.</summary>
    Langevin,
    /// <summary>Annealed Langevin dynamics (NCSN): step size 2 alpha_i (snr sigma_t)^2 from the marginal standard
    /// deviation, independent of the batch and of the state: the corrector to use with
    /// <see cref="NoiseSource.PerSample"/>.</summary>
    AnnealedLangevin,
}

/// <summary>How the Langevin corrector measures |z| / |score| for its step size
/// e = 2 alpha_i (snr |z| / |score|)^2.</summary>
public enum LangevinNorm
{
    /// <summary>Norms averaged over the batch, one step size for all samples (default): the paper's code and
    /// diffusers' <c>step_correct</c>. The samples of a batch influence each other's step size, so results
    /// depend on the batch; for batch-size independent sampling use <see cref="Corrector.AnnealedLangevin"/>.</summary>
    BatchMean,
    /// <summary>Each sample's own norms: samples never influence each other, but the step then depends on
    /// the state, which biases the samples (an unadjusted Langevin step whose stationary law is tilted
    /// towards p(x) |score(x)|^2, by about 1/D in D dimensions). Measured (docs/correctors.md): sliced W1
    /// 0.170 against 0.0096 without a corrector on a 2-D mixture, 0.028 against 0.0115 in 16-D; negligible
    /// for images.</summary>
    PerSample,
}

/// <summary>What a model's output means.</summary>
public enum ModelPrediction
{
    /// <summary>The noise eps(x, t) (diffusion models' usual output); score = -eps / sigma_t.</summary>
    Noise,
    /// <summary>The score grad_x log p_t(x).</summary>
    Score,
    /// <summary>The clean data x_0.</summary>
    Data,
}

/// <summary>Where a sampler's Gaussian noise (the prior draw, and a stochastic sampler's step noise)
/// comes from.</summary>
public enum NoiseSource
{
    /// <summary>One stream for the whole batch from the caller's generator (default): the numbers
    /// PyTorch's <c>torch.randn(shape, generator=g)</c> gives for the same seed, so a seeded run matches
    /// a Python port of it.</summary>
    Generator,
    /// <summary>Batch-size independent: sample i draws from its own stream, seeded by (seed, i), so a
    /// batch of 1 reproduces the first sample of a batch of 1,000. One generator call per sample per
    /// draw.</summary>
    PerSample,
    /// <summary>A faster source of exact normal draws computed in managed code (a counter-based
    /// ziggurat filled in parallel blocks on large tensors). Its stream differs from PyTorch's; it pays
    /// for large tensors when more than one core is free (see docs/performance.md).</summary>
    Fast,
}

/// <summary>What every entry point that calls a model needs to know about it. The model must return a
/// floating-point tensor shaped like x: an integer output is an <see cref="InvalidOperationException"/> naming
/// its dtype and the expected one; a floating output of another precision (float16, bfloat16, float64 for
/// float32 samples) is converted to the samples' dtype, as in every sampler, the likelihood, encoding and the
/// schedulers' steps.</summary>
public abstract class ModelOptions
{
    /// <summary>What the model returns (default <see cref="ModelPrediction.Noise"/>).</summary>
    public ModelPrediction Prediction { get; set; } = ModelPrediction.Noise;
}

/// <summary>The options every sampler shares: the model's output, the noise source, and the dtype and device
/// of the samples.</summary>
public abstract class SamplerOptions : ModelOptions
{
    /// <summary>Where the noise comes from (the prior draw, and a stochastic sampler's step noise; default
    /// <see cref="NoiseSource.Generator"/>).</summary>
    public NoiseSource Noise { get; set; } = NoiseSource.Generator;
    /// <summary>Seed of the <see cref="NoiseSource.PerSample"/> and <see cref="NoiseSource.Fast"/> sources.
    /// Default null: drawn from the generator (so the run is reproducible from the generator alone), or
    /// from system entropy without one. Not used by <see cref="NoiseSource.Generator"/>.</summary>
    public long? NoiseSeed { get; set; }
    /// <summary>Dtype of the samples (default float32).</summary>
    public ScalarType Dtype { get; set; } = ScalarType.Float32;
    /// <summary>Device of the samples (default CPU).</summary>
    public Device Device { get; set; } = CPU;
    /// <summary>Known values the samples must have (inpainting, or a linear condition in an orthonormal basis);
    /// default null, no condition. Every sampler takes it; see <see cref="CSharp.Condition"/>.</summary>
    public Condition? Condition { get; set; }
    /// <summary>Stop at the first non-finite (NaN or infinite) model output or state with a
    /// <see cref="ScoreSde.NonFiniteException"/> naming the step and the time (default true). Every model
    /// output and, after every step, the state are checked (one vectorised pass over each for float32 and
    /// float64 CPU tensors; its measured cost is in docs/performance.md); false skips the check, and an
    /// overflowing run then returns NaN samples. The F# core's <c>Sampling.CheckFinite</c>, the command
    /// line's <c>--check-finite</c>.</summary>
    public bool CheckFinite { get; set; } = true;
}

/// <summary>Options of <see cref="Sampler.PredictorCorrector"/>.</summary>
public sealed class PcOptions : SamplerOptions
{
    /// <summary>Number of predictor steps on a uniform grid from 1 down to <see cref="Eps"/> (default 1000).</summary>
    public int Steps { get; set; } = 1000;
    /// <summary>The predictor (default <see cref="CSharp.Predictor.ReverseDiffusion"/>).</summary>
    public Predictor Predictor { get; set; } = Predictor.ReverseDiffusion;
    /// <summary>The corrector (default <see cref="CSharp.Corrector.Langevin"/>).</summary>
    public Corrector Corrector { get; set; } = Corrector.Langevin;
    /// <summary>Target signal-to-noise ratio of the corrector (default 0.16).</summary>
    public double Snr { get; set; } = 0.16;
    /// <summary>Corrector steps per time point (default 1).</summary>
    public int CorrectorSteps { get; set; } = 1;
    /// <summary>How the Langevin corrector measures its norms (default <see cref="CSharp.LangevinNorm.BatchMean"/>,
    /// the paper's code; <see cref="CSharp.LangevinNorm.PerSample"/> is biased on low-dimensional data).</summary>
    public LangevinNorm LangevinNorm { get; set; } = LangevinNorm.BatchMean;
    /// <summary>Last time of the grid (default 1e-3).</summary>
    public double Eps { get; set; } = 1e-3;
    /// <summary>Return the mean of the final update, without its noise (default true).</summary>
    public bool Denoise { get; set; } = true;
}

/// <summary>Samples and the number of model evaluations used to make them.</summary>
public sealed class SampleResult
{
    internal SampleResult(Tensor samples, int nfe)
    {
        Samples = samples;
        Nfe = nfe;
    }

    /// <summary>The samples; the caller owns (and disposes) them.</summary>
    public Tensor Samples { get; }

    /// <summary>Number of model evaluations.</summary>
    public int Nfe { get; }
}
