using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>The configuration of <see cref="ScoreSdeVpScheduler"/> (diffusers' config keys in brackets).</summary>
/// <param name="NumTrainTimesteps">Number of training timesteps [num_train_timesteps]; stored, unused by the mathematics.</param>
/// <param name="BetaMin">beta(0) [beta_min].</param>
/// <param name="BetaMax">beta(1) [beta_max].</param>
/// <param name="SamplingEps">End of the sampling interval [sampling_eps].</param>
public sealed record SchedulerConfig(int NumTrainTimesteps, double BetaMin, double BetaMax, double SamplingEps);

/// <summary>
/// The variance-preserving SDE scheduler of Hugging Face diffusers (<c>ScoreSdeVpScheduler</c>) with
/// C# naming. It reproduces the Python class to float tolerance, including its quirks (see
/// <see cref="StepPred"/>): a loop seeded with the same generator seed gives the same numbers as
/// Python on CPU. A thin shell over the F# core (<c>ScoreSde.DiffusersVp</c>).
/// </summary>
public sealed class ScoreSdeVpScheduler
{
    private readonly ScoreSde.DiffusersVpConfig _core;
    private readonly SchedulerNoise _noise = new();

    /// <summary>Creates the scheduler.</summary>
    /// <param name="numTrainTimesteps">Number of training timesteps, at least 1 (default 2000; unused by the mathematics).</param>
    /// <param name="betaMin">beta(0), positive (default 0.1).</param>
    /// <param name="betaMax">beta(1), at least betaMin (default 20).</param>
    /// <param name="samplingEps">Last timestep, in (0, 1) (default 1e-3).</param>
    /// <exception cref="ArgumentException">A parameter is out of range; the message names it and its value.</exception>
    public ScoreSdeVpScheduler(int numTrainTimesteps = 2000, double betaMin = 0.1, double betaMax = 20.0, double samplingEps = 1e-3)
    {
        _core = new ScoreSde.DiffusersVpConfig(numTrainTimesteps, betaMin, betaMax, samplingEps);
        ScoreSde.DiffusersVp.validate(_core);
        Config = new SchedulerConfig(numTrainTimesteps, betaMin, betaMax, samplingEps);
    }

    /// <summary>The four configuration values.</summary>
    public SchedulerConfig Config { get; }

    /// <summary>The continuous timesteps, linspace(1, samplingEps, n) in float32; null until <see cref="SetTimesteps"/>.
    /// Owned by the scheduler (replaced, not disposed, by the next <see cref="SetTimesteps"/>).</summary>
    public Tensor? Timesteps { get; private set; }

    /// <summary>The order of the solver (1).</summary>
    public int Order => 1;

    /// <summary>num_train_timesteps, as Python's len(scheduler).</summary>
    public int Length => Config.NumTrainTimesteps;

    /// <summary>Standard deviation of the initial noise (1.0).</summary>
    public double InitNoiseSigma => 1.0;

    /// <summary>Sets the continuous timesteps used for sampling: linspace(1, samplingEps, numInferenceSteps).</summary>
    /// <param name="numInferenceSteps">Number of steps, at least 1.</param>
    /// <param name="device">Device of the timesteps (default CPU).</param>
    /// <exception cref="ArgumentException">numInferenceSteps is below 1.</exception>
    public void SetTimesteps(int numInferenceSteps, Device? device = null)
    {
        Timesteps = ScoreSde.DiffusersVp.timesteps(_core, numInferenceSteps, device ?? CPU);
    }

    private int StepsOrThrow(string method)
    {
        if (Timesteps is null)
            throw new InvalidOperationException($"{method} needs the timesteps: call SetTimesteps(numInferenceSteps) first.");
        return (int)Timesteps.numel();
    }

    /// <summary>
    /// Predicts the sample at the previous timestep by one Euler-Maruyama step of the reverse SDE,
    /// exactly as diffusers' <c>step_pred</c>:
    /// <list type="bullet">
    /// <item><paramref name="score"/> is the model output treated as a noise prediction: the score used is -score / sigma_t;</item>
    /// <item>the step is dt = -1 / len(timesteps) (not the grid spacing (1 - eps) / (n - 1));</item>
    /// <item>noise is randn(x.shape) from <paramref name="generator"/>, in x's dtype, drawn after the mean.</item>
    /// </list>
    /// The coefficients follow t's dtype as in diffusers: for a float32 <paramref name="t"/> they are computed
    /// with diffusers' float32 operations in its order (std = sqrt(1 - exp(2 log_mean_coeff)), not expm1), so a
    /// step matches Python to about 1e-7 of its largest value; a float64 t keeps float64 accuracy.
    /// </summary>
    /// <param name="score">Model output (noise prediction), shaped like x.</param>
    /// <param name="x">Current sample, batch first.</param>
    /// <param name="t">Current time: 0-d or one value per batch element, in (0, 1].</param>
    /// <param name="generator">Noise source. Without one, a private generator seeded from system
    /// entropy is used (never torch's global generator).</param>
    /// <returns>The new sample and its mean. The inputs are neither modified nor disposed.</returns>
    /// <exception cref="InvalidOperationException"><see cref="SetTimesteps"/> has not been called.</exception>
    /// <exception cref="ArgumentException">Shapes disagree, t has the wrong number of elements or is out of range, or an argument is null.</exception>
    public SdeOutput StepPred(Tensor score, Tensor x, Tensor t, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(score);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(t);
        int n = StepsOrThrow(nameof(StepPred));
        var r = ScoreSde.DiffusersVp.stepPred(_core, n, score, x, t, _noise.For(generator, x.device));
        return new SdeOutput(r.Sample, r.Mean);
    }

    /// <summary>
    /// One Langevin corrector step at time t (Song et al. 2021, Algorithm 5), beyond diffusers' VP class:
    /// step e = 2 alpha_i (snr |z| / |s|)^2, mean = x + e s, sample = mean + sqrt(2 e) z,
    /// with s = -modelOutput / sigma_t and alpha_i = 1 - beta_i of the interval [t - 1/len(timesteps), t].
    /// The norms |z| and |s| are averaged over the batch by default, as the paper's code and diffusers'
    /// <c>ScoreSdeVeScheduler.step_correct</c> do (<see cref="LangevinNorm"/>).
    /// </summary>
    /// <param name="modelOutput">Model output (noise prediction) at (x, t), shaped like x.</param>
    /// <param name="x">Current sample.</param>
    /// <param name="t">Current time: 0-d or one value per batch element, in (0, 1].</param>
    /// <param name="generator">Noise source (see <see cref="StepPred"/>).</param>
    /// <param name="snr">Target signal-to-noise ratio, positive (default 0.16, the paper's VP value).</param>
    /// <param name="norm">How |z| and |s| are measured (default <see cref="LangevinNorm.BatchMean"/>;
    /// <see cref="LangevinNorm.PerSample"/> is biased on low-dimensional data).</param>
    /// <returns>The corrected sample and its mean.</returns>
    /// <exception cref="InvalidOperationException"><see cref="SetTimesteps"/> has not been called.</exception>
    public SdeOutput StepCorrect(Tensor modelOutput, Tensor x, Tensor t, Generator? generator = null, double snr = 0.16,
                                 LangevinNorm norm = LangevinNorm.BatchMean)
    {
        ArgumentNullException.ThrowIfNull(modelOutput);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(t);
        var coreNorm = Interop.ToCore(norm, nameof(norm));
        int n = StepsOrThrow(nameof(StepCorrect));
        var r = ScoreSde.DiffusersVp.stepCorrectWith(_core, n, coreNorm, modelOutput, x, t, snr, _noise.For(generator, x.device));
        return new SdeOutput(r.Sample, r.Mean);
    }

    /// <summary>Forward marginal: alpha_t original + sigma_t noise.</summary>
    /// <param name="original">Clean samples x_0.</param>
    /// <param name="noise">Standard normal noise shaped like original.</param>
    /// <param name="t">Time: 0-d or one value per batch element.</param>
    /// <returns>A new tensor; the inputs are not modified.</returns>
    public Tensor AddNoise(Tensor original, Tensor noise, Tensor t)
    {
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(noise);
        ArgumentNullException.ThrowIfNull(t);
        return ScoreSde.DiffusersVp.addNoise(_core, original, noise, t);
    }

    /// <summary>Returns the sample unchanged (this scheduler does not scale model inputs); present
    /// for API compatibility with the other diffusers schedulers.</summary>
    /// <param name="sample">The model input.</param>
    /// <param name="timestep">Ignored.</param>
    /// <returns><paramref name="sample"/> itself.</returns>
    public Tensor ScaleModelInput(Tensor sample, Tensor? timestep = null)
    {
        ArgumentNullException.ThrowIfNull(sample);
        return sample;
    }

    /// <summary>Writes <c>scheduler_config.json</c> with diffusers' keys into a directory (created if needed).</summary>
    /// <param name="directory">Target directory.</param>
    /// <returns>The path of the written file.</returns>
    public string SaveConfig(string directory) =>
        DiffusersConfigFile.Write(directory, nameof(ScoreSdeVpScheduler), new JsonObject
        {
            ["num_train_timesteps"] = Config.NumTrainTimesteps,
            ["beta_min"] = Config.BetaMin,
            ["beta_max"] = Config.BetaMax,
            ["sampling_eps"] = Config.SamplingEps,
        });

    /// <summary>Reads a diffusers <c>scheduler_config.json</c> (a file, or a directory holding one).
    /// Unknown keys are ignored and missing keys take their defaults.</summary>
    /// <param name="fileOrDirectory">The JSON file or its directory.</param>
    /// <returns>A scheduler with that configuration.</returns>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="FormatException">The file is not a JSON object, or a key has the wrong type or class name.</exception>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    public static ScoreSdeVpScheduler FromConfig(string fileOrDirectory)
    {
        var file = DiffusersConfigFile.Read(fileOrDirectory, nameof(ScoreSdeVpScheduler));
        var defaults = ScoreSde.DiffusersVp.defaults;
        return new ScoreSdeVpScheduler(
            file.Integer("num_train_timesteps", defaults.NumTrainTimesteps),
            file.Number("beta_min", defaults.BetaMin),
            file.Number("beta_max", defaults.BetaMax),
            file.Number("sampling_eps", defaults.SamplingEps));
    }
}
