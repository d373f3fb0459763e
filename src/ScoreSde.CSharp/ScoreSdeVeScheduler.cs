using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>The configuration of <see cref="ScoreSdeVeScheduler"/> (diffusers' config keys in brackets).</summary>
/// <param name="NumTrainTimesteps">Number of training timesteps [num_train_timesteps]: the length of the tables the constructor sets.</param>
/// <param name="Snr">Target signal-to-noise ratio of the corrector [snr].</param>
/// <param name="SigmaMin">Smallest noise scale [sigma_min].</param>
/// <param name="SigmaMax">Largest noise scale, the initial noise's standard deviation [sigma_max].</param>
/// <param name="SamplingEps">End of the sampling interval [sampling_eps].</param>
/// <param name="CorrectSteps">Corrector steps per time point in the sampling loop [correct_steps].</param>
public sealed record VeSchedulerConfig(
    int NumTrainTimesteps, double Snr, double SigmaMin, double SigmaMax, double SamplingEps, int CorrectSteps);

/// <summary>
/// The variance-exploding SDE scheduler of Hugging Face diffusers (<c>ScoreSdeVeScheduler</c>) with C#
/// naming: predictor (<see cref="StepPred"/>) and corrector (<see cref="StepCorrect"/>) steps of the VE
/// SDE of Song et al. (2021) with the SMLD noise scales. It reproduces the Python class, dtypes
/// included: a loop seeded with the same generator seed gives the same numbers as Python on CPU. A thin
/// shell over the F# core (<c>ScoreSde.DiffusersVe</c>).
/// </summary>
/// <remarks>
/// As in diffusers, the constructor calls <c>SetSigmas(numTrainTimesteps)</c>, which also sets
/// numTrainTimesteps timesteps: steps work before any <see cref="SetTimesteps"/> call. The sampling loop
/// of diffusers' <c>ScoreSdeVePipeline</c> is: <c>SetTimesteps(n)</c>, <c>SetSigmas(n)</c>, then for each i,
/// <c>CorrectSteps</c> corrector steps with the model called at <c>Sigmas[i]</c>, one predictor step at
/// <c>Timesteps[i]</c>, and the last step's <see cref="SdeOutput.PrevSampleMean"/> as the result.
/// </remarks>
public sealed class ScoreSdeVeScheduler
{
    private readonly ScoreSde.DiffusersVeConfig _core;
    private readonly SchedulerNoise _noise = new();
    private ScoreSde.DiffusersVeSchedule _schedule;

    /// <summary>Creates the scheduler and sets its tables over <paramref name="numTrainTimesteps"/> steps.</summary>
    /// <param name="numTrainTimesteps">Number of training timesteps, at least 1 (default 2000).</param>
    /// <param name="snr">Corrector signal-to-noise ratio, positive (default 0.15).</param>
    /// <param name="sigmaMin">Smallest noise scale, positive (default 0.01).</param>
    /// <param name="sigmaMax">Largest noise scale, above sigmaMin and below 1.8e19 (default 1348).</param>
    /// <param name="samplingEps">Last timestep, in (0, 1) (default 1e-5).</param>
    /// <param name="correctSteps">Corrector steps per time point, zero or more (default 1).</param>
    /// <exception cref="ArgumentException">A parameter is out of range; the message names it and its value.</exception>
    public ScoreSdeVeScheduler(int numTrainTimesteps = 2000, double snr = 0.15, double sigmaMin = 0.01,
                               double sigmaMax = 1348.0, double samplingEps = 1e-5, int correctSteps = 1)
    {
        _core = new ScoreSde.DiffusersVeConfig(numTrainTimesteps, snr, sigmaMin, sigmaMax, samplingEps, correctSteps);
        _schedule = ScoreSde.DiffusersVe.create(_core);
        Config = new VeSchedulerConfig(numTrainTimesteps, snr, sigmaMin, sigmaMax, samplingEps, correctSteps);
    }

    /// <summary>The six configuration values.</summary>
    public VeSchedulerConfig Config { get; }

    /// <summary>The continuous timesteps, linspace(1, eps, n) in float32 on the device given to
    /// <see cref="SetTimesteps"/> (the constructor sets numTrainTimesteps of them on the CPU). Owned by
    /// the scheduler: replaced, not disposed, by the next call.</summary>
    public Tensor Timesteps => _schedule.Timesteps;

    /// <summary>sigma_min (sigma_max / sigma_min)^t for each timestep t at the last <see cref="SetSigmas"/>
    /// call, float32 on the CPU: the noise scales at which the pipeline calls the model. Owned by the scheduler.</summary>
    public Tensor Sigmas => _schedule.Sigmas;

    /// <summary>exp(linspace(log sigma_min, log sigma_max, n)), float32 on the CPU: the noise scales
    /// <see cref="StepPred"/> and <see cref="AddNoise"/> index. Owned by the scheduler.</summary>
    public Tensor DiscreteSigmas => _schedule.DiscreteSigmas;

    /// <summary>The order of the solver (1).</summary>
    public int Order => 1;

    /// <summary>num_train_timesteps, as Python's len(scheduler).</summary>
    public int Length => Config.NumTrainTimesteps;

    /// <summary>Standard deviation of the initial noise: sigmaMax.</summary>
    public double InitNoiseSigma => Config.SigmaMax;

    /// <summary>Sets the continuous timesteps: linspace(1, samplingEps, numInferenceSteps) in float32.
    /// The sigmas are left as they are (call <see cref="SetSigmas"/> after this, as the pipeline does).</summary>
    /// <param name="numInferenceSteps">Number of steps, at least 1.</param>
    /// <param name="samplingEps">Last timestep, in (0, 1); default <see cref="VeSchedulerConfig.SamplingEps"/>.</param>
    /// <param name="device">Device of the timesteps (default CPU).</param>
    /// <exception cref="ArgumentException">An argument is out of range.</exception>
    public void SetTimesteps(int numInferenceSteps, double? samplingEps = null, Device? device = null)
    {
        _schedule = ScoreSde.DiffusersVe.setTimesteps(_core, _schedule, numInferenceSteps, Interop.Option(samplingEps), device ?? CPU);
    }

    /// <summary>Sets <see cref="Sigmas"/> over the current timesteps and numInferenceSteps <see cref="DiscreteSigmas"/>.</summary>
    /// <param name="numInferenceSteps">Number of discrete sigmas, at least 1.</param>
    /// <param name="sigmaMin">Smallest noise scale; default the config's.</param>
    /// <param name="sigmaMax">Largest noise scale; default the config's.</param>
    /// <param name="samplingEps">Validated like the config's but, as in diffusers, used only when no
    /// timesteps exist, which never happens after construction.</param>
    /// <exception cref="ArgumentException">An argument is out of range.</exception>
    public void SetSigmas(int numInferenceSteps, double? sigmaMin = null, double? sigmaMax = null, double? samplingEps = null)
    {
        _schedule = ScoreSde.DiffusersVe.setSigmas(
            _core, _schedule, numInferenceSteps, Interop.Option(sigmaMin), Interop.Option(sigmaMax), Interop.Option(samplingEps));
    }

    /// <summary>
    /// Predicts the sample at the previous timestep by one reverse-diffusion step of the VE SDE, exactly
    /// as diffusers' <c>step_pred</c>:
    /// <list type="bullet">
    /// <item><paramref name="modelOutput"/> is used as the score;</item>
    /// <item>each batch element's index is i = long(t (len(Timesteps) - 1)), computed in float32 unless
    /// <paramref name="timestep"/> is a float64 tensor with a dimension (torch's promotion);</item>
    /// <item>g^2 = sigma_i^2 - sigma_{i-1}^2 from consecutive <see cref="DiscreteSigmas"/> (sigma_{-1} = 0);</item>
    /// <item>mean = sample + g^2 modelOutput, then noise z ~ randn(sample.shape) in the sample's dtype
    /// from <paramref name="generator"/>, prevSample = mean + g z.</item>
    /// </list>
    /// The results have the dtype torch gives in Python: float64 if the sample, the output or a
    /// one-per-sample timestep is float64.
    /// </summary>
    /// <param name="modelOutput">The model's score estimate, shaped like the sample (float32 or float64).</param>
    /// <param name="timestep">The continuous time in [0, 1] (usually <c>Timesteps[i]</c>): 0-d, or one value per batch element.</param>
    /// <param name="sample">Current sample, batch first (float32 or float64).</param>
    /// <param name="generator">Noise source. Without one, a private generator seeded from system
    /// entropy is used (never torch's global generator).</param>
    /// <returns>The new sample and its mean. The inputs are neither modified nor disposed.</returns>
    /// <exception cref="ArgumentException">A tensor is null, of another dtype or shape, the timestep is
    /// outside [0, 1] or indexes beyond the discrete sigmas, or the generator is disposed.</exception>
    public SdeOutput StepPred(Tensor modelOutput, Tensor timestep, Tensor sample, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(modelOutput);
        ArgumentNullException.ThrowIfNull(timestep);
        ArgumentNullException.ThrowIfNull(sample);
        var r = ScoreSde.DiffusersVe.stepPred(_schedule, modelOutput, timestep, sample, _noise.For(generator, sample.device));
        return new SdeOutput(r.Sample, r.Mean);
    }

    /// <summary>
    /// Corrects the sample by one Langevin step with the model output as the score, exactly as
    /// diffusers' <c>step_correct</c>: noise z ~ randn(sample.shape) in float32 (whatever the sample's
    /// dtype) is drawn first; e = 2 (snr mean_b |z_b| / mean_b |modelOutput_b|)^2 with per-sample norms
    /// averaged over the batch, rounded to float32; mean = sample + e modelOutput; prevSample = mean + sqrt(2 e) z.
    /// diffusers returns prev_sample only; this returns the same <see cref="SdeOutput"/> as
    /// <see cref="StepPred"/>, whose <see cref="SdeOutput.PrevSample"/> is diffusers' prev_sample and whose
    /// <see cref="SdeOutput.PrevSampleMean"/> is the step's mean (for a last corrector step without noise).
    /// A model output that is zero everywhere gives a zero step (diffusers would divide by zero).
    /// </summary>
    /// <param name="modelOutput">The model's score estimate at the sample, shaped like it (float32 or float64).</param>
    /// <param name="sample">Current sample, batch first (float32 or float64).</param>
    /// <param name="generator">Noise source (see <see cref="StepPred"/>).</param>
    /// <returns>The corrected sample and its mean, new tensors; the inputs are neither modified nor disposed.</returns>
    /// <exception cref="ArgumentException">A tensor is null, of another dtype or shape, the output is not
    /// finite, or the generator is disposed.</exception>
    public SdeOutput StepCorrect(Tensor modelOutput, Tensor sample, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(modelOutput);
        ArgumentNullException.ThrowIfNull(sample);
        var r = ScoreSde.DiffusersVe.stepCorrect(_core, modelOutput, sample, _noise.For(generator, sample.device));
        return new SdeOutput(r.Sample, r.Mean);
    }

    /// <summary>Perturbs clean samples: original + noise sigma_i, with sigma_i = DiscreteSigmas[timesteps[i]]
    /// broadcast over the trailing dimensions (diffusers' <c>add_noise</c>; its indices run over the
    /// constructor's numTrainTimesteps discrete sigmas unless <see cref="SetSigmas"/> changed them).</summary>
    /// <param name="original">Clean samples, batch first (float32 or float64).</param>
    /// <param name="noise">Standard normal noise shaped like original (float32 or float64).</param>
    /// <param name="timesteps">Integer indices into <see cref="DiscreteSigmas"/>: one, or one per batch element.</param>
    /// <returns>A new tensor; the inputs are not modified.</returns>
    /// <exception cref="ArgumentException">A tensor is null, of another dtype or shape, or an index is out of range.</exception>
    public Tensor AddNoise(Tensor original, Tensor noise, Tensor timesteps)
    {
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(noise);
        ArgumentNullException.ThrowIfNull(timesteps);
        return ScoreSde.DiffusersVe.addNoise(_schedule, original, noise, timesteps);
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
        DiffusersConfigFile.Write(directory, nameof(ScoreSdeVeScheduler), new JsonObject
        {
            ["num_train_timesteps"] = Config.NumTrainTimesteps,
            ["snr"] = Config.Snr,
            ["sigma_min"] = Config.SigmaMin,
            ["sigma_max"] = Config.SigmaMax,
            ["sampling_eps"] = Config.SamplingEps,
            ["correct_steps"] = Config.CorrectSteps,
        });

    /// <summary>Reads a diffusers <c>scheduler_config.json</c> (a file, or a directory holding one).
    /// Unknown keys are ignored and missing keys take their defaults.</summary>
    /// <param name="fileOrDirectory">The JSON file or its directory.</param>
    /// <returns>A scheduler with that configuration.</returns>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="FormatException">The file is not a JSON object, or a key has the wrong type or class name.</exception>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    public static ScoreSdeVeScheduler FromConfig(string fileOrDirectory)
    {
        var file = DiffusersConfigFile.Read(fileOrDirectory, nameof(ScoreSdeVeScheduler));
        var defaults = ScoreSde.DiffusersVe.defaults;
        return new ScoreSdeVeScheduler(
            file.Integer("num_train_timesteps", defaults.NumTrainTimesteps),
            file.Number("snr", defaults.Snr),
            file.Number("sigma_min", defaults.SigmaMin),
            file.Number("sigma_max", defaults.SigmaMax),
            file.Number("sampling_eps", defaults.SamplingEps),
            file.Integer("correct_steps", defaults.CorrectSteps));
    }
}
