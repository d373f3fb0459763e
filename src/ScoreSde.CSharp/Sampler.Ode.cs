using static TorchSharp.torch;

namespace ScoreSde.CSharp;

public static partial class Sampler
{
    /// <summary>
    /// Samples by integrating the probability-flow ODE dx/dt = -1/2 beta(t) (x + score) from t = 1 down to
    /// <see cref="OdeOptions.Eps"/>, starting from prior noise N(0, I) or from <see cref="OdeOptions.Latent"/>.
    /// Deterministic given the start: decoding a latent from <see cref="Encode"/> returns the data to within the
    /// solver's accuracy.
    /// </summary>
    /// <param name="sde">The SDE.</param>
    /// <param name="model">The model, called as model(x, t) with t holding one time per batch element; returns a
    /// tensor shaped like x (see <see cref="OdeOptions.Prediction"/>). It must not modify x.</param>
    /// <param name="shape">Sample shape, batch first (must equal the latent's shape when one is given).</param>
    /// <param name="options">Solver options.</param>
    /// <param name="generator">Source of the prior noise (unused with a latent). Without one, a private
    /// generator seeded from system entropy is used.</param>
    /// <returns>The samples and the number of model evaluations.</returns>
    /// <exception cref="ArgumentException">An option, the shape or the latent is invalid.</exception>
    /// <exception cref="InvalidOperationException">The adaptive solver exhausted MaxSteps or its step size underflowed.</exception>
    public static SampleResult ProbabilityFlow(VpSde sde, Func<Tensor, Tensor, Tensor> model, long[] shape,
                                               OdeOptions options, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        Interop.CheckShape(shape);
        Interop.CheckDtype(options.Dtype, "options.Dtype");
        ArgumentNullException.ThrowIfNull(options.Device, "options.Device");
        var method = OdeInterop.Method(options);
        OdeInterop.CheckEps(options.Eps, "options.Eps");
        Interop.CheckNoise(options.Noise, "options");
        var settings = new ScoreSde.FlowSettings(method, options.Eps, options.Denoise);
        var coreModel = Interop.ToModel(model, options.Prediction);
        Tensor xT;
        if (options.Latent is { } latent)
        {
            if (!is_floating_point(latent))
                throw new ArgumentException($"options.Latent must be a floating-point tensor (got {latent.dtype}).", "options.Latent");
            Interop.CheckLatentShape(latent, shape, "options.Latent");
            using var detached = latent.detach();
            xT = detached.to(options.Dtype, options.Device, copy: true);
        }
        else
        {
            xT = ScoreSde.Sampler.prior(shape, options.Dtype, options.Device,
                                        Interop.NoiseFrom(options.Noise, options.NoiseSeed, generator, options.Device, "options"));
        }
        using (xT)
        {
            var result = ScoreSde.ProbabilityFlow.sample(sde.Core, coreModel, settings, xT);
            return new SampleResult(result.Samples, result.Nfe);
        }
    }

    /// <summary>
    /// Encodes data into latents: integrates the probability-flow ODE from <see cref="OdeOptions.Eps"/> up to
    /// t = 1 starting at the data. <see cref="ProbabilityFlow"/> with <see cref="OdeOptions.Latent"/> set to the
    /// result (and the same solver options) decodes it. The latent has the data's dtype and device
    /// (<see cref="OdeOptions.Dtype"/> and <see cref="OdeOptions.Device"/> are not used);
    /// <see cref="OdeOptions.Latent"/> must be null and <see cref="OdeOptions.Denoise"/> false.
    /// </summary>
    /// <param name="sde">The SDE.</param>
    /// <param name="model">The model (see <see cref="ProbabilityFlow"/>).</param>
    /// <param name="data">Data, batch first; not modified.</param>
    /// <param name="options">Solver options.</param>
    /// <returns>The latents and the number of model evaluations.</returns>
    /// <exception cref="ArgumentException">An option or the data is invalid.</exception>
    /// <exception cref="InvalidOperationException">The adaptive solver exhausted MaxSteps or its step size underflowed.</exception>
    public static EncodeResult Encode(VpSde sde, Func<Tensor, Tensor, Tensor> model, Tensor data, OdeOptions options)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Latent is not null)
            throw new ArgumentException("options.Latent must be null for Encode (the data are the starting point).", "options.Latent");
        if (options.Denoise)
            throw new ArgumentException("options.Denoise must be false for Encode (denoising applies to sampling).", "options.Denoise");
        Interop.CheckData(data, nameof(data));
        var method = OdeInterop.Method(options);
        OdeInterop.CheckEps(options.Eps, "options.Eps");
        var result = ScoreSde.ProbabilityFlow.encode(sde.Core, Interop.ToModel(model, options.Prediction), method, options.Eps, data);
        return new EncodeResult(result.Latent, result.Nfe);
    }
}

/// <summary>Conversions of the ODE options to the core's values.</summary>
internal static class OdeInterop
{
    /// <summary>The core's adaptive settings for the given tolerances, control and step budget.</summary>
    internal static ScoreSde.AdaptiveSettings Adaptive(double rtol, double atol, bool perSample, int maxSteps, string prefix)
    {
        CheckTolerance(rtol, prefix + ".Rtol", upperOne: true);
        CheckTolerance(atol, prefix + ".Atol", upperOne: false);
        if (maxSteps < 1)
            throw new ArgumentOutOfRangeException(prefix + ".MaxSteps", maxSteps, $"{prefix}.MaxSteps must be at least 1 (got {maxSteps}).");
        var d = ScoreSde.AdaptiveOde.defaults;
        var control = perSample ? ScoreSde.StepControl.PerSample : ScoreSde.StepControl.BatchGlobal;
        return new ScoreSde.AdaptiveSettings(rtol, atol, control, d.InitialStep, d.MinStep, d.MaxStep, maxSteps,
                                             d.Safety, d.MinFactor, d.MaxFactor, d.PiBeta, d.Observer);
    }

    /// <summary>The core's ODE method for the options.</summary>
    internal static ScoreSde.OdeMethod Method(OdeOptions options)
    {
        if (options.Steps < 1)
            throw new ArgumentOutOfRangeException("options.Steps", options.Steps, $"options.Steps must be at least 1 (got {options.Steps}).");
        ScoreSde.OdeMethod Fixed(ScoreSde.OdeSolver s) => ScoreSde.OdeMethod.NewFixedStep(s, ScoreSde.TimeGrid.Uniform, options.Steps);
        return options.Solver switch
        {
            OdeSolver.Euler => Fixed(ScoreSde.OdeSolver.Euler),
            OdeSolver.Heun => Fixed(ScoreSde.OdeSolver.Heun),
            OdeSolver.Rk4 => Fixed(ScoreSde.OdeSolver.Rk4),
            OdeSolver.Dopri5 => ScoreSde.OdeMethod.NewDopri5(Adaptive(options.Rtol, options.Atol, options.PerSampleStepControl, options.MaxSteps, "options")),
            _ => throw new ArgumentOutOfRangeException("options.Solver", options.Solver, $"options.Solver is not a known ODE solver (got {options.Solver}).")
        };
    }

    /// <summary>Checks a tolerance: finite, positive and (for relative ones) below 1.</summary>
    internal static void CheckTolerance(double value, string name, bool upperOne)
    {
        if (!double.IsFinite(value) || value <= 0 || (upperOne && value >= 1))
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be {(upperOne ? "in (0, 1)" : "a positive finite number")} (got {value}).");
    }

    /// <summary>Checks an end time eps in (0, 1).</summary>
    internal static void CheckEps(double eps, string name)
    {
        if (!double.IsFinite(eps) || eps <= 0 || eps >= 1)
            throw new ArgumentOutOfRangeException(name, eps, $"{name} must be in (0, 1) (got {eps}).");
    }
}
