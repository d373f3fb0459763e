using static TorchSharp.torch;

namespace ScoreSde.CSharp;

public static partial class Sampler
{
    /// <summary>
    /// Samples by integrating the probability-flow ODE dx/dt = f(t) x - 1/2 g(t)^2 score from t = 1 down to
    /// <see cref="OdeOptions.Eps"/>, starting from a draw of the SDE's prior or from <see cref="OdeOptions.Latent"/>.
    /// Deterministic given the start: decoding a latent from <see cref="Encode"/> returns the data to within the
    /// solver's accuracy.
    /// </summary>
    /// <param name="sde">The SDE.</param>
    /// <param name="model">The model, called as model(x, t) with t holding one time per batch element; returns a
    /// tensor shaped like x (see <see cref="ModelOptions.Prediction"/>). It must not modify x.</param>
    /// <param name="shape">Sample shape, batch first (must equal the latent's shape when one is given).</param>
    /// <param name="options">Solver options.</param>
    /// <param name="generator">Source of the prior noise (unused with a latent). Without one, a private
    /// generator seeded from system entropy is used.</param>
    /// <returns>The samples and the number of model evaluations.</returns>
    /// <exception cref="ArgumentException">An option, the shape or the latent is invalid; the message names it.</exception>
    /// <exception cref="InvalidOperationException">The adaptive solver exhausted MaxSteps or its step size underflowed.</exception>
    public static SampleResult ProbabilityFlow(Sde sde, Func<Tensor, Tensor, Tensor> model, long[] shape,
                                               OdeOptions options, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        var sampling = new ScoreSde.Sampling(
            ScoreSde.Method.NewProbabilityFlow(OdeInterop.Method(options)),
            ScoreSde.ScheduleModule.uniform(options.Steps, options.Eps),
            options.Denoise ? ScoreSde.Finish.Tweedie : ScoreSde.Finish.NoFinish,
            null, null, true);
        return Interop.Sample(sde, model, shape, options, sampling, options.Latent, generator);
    }

    /// <summary>
    /// Encodes data into latents: integrates the probability-flow ODE from <see cref="OdeOptions.Eps"/> up to
    /// t = 1 starting at the data. <see cref="ProbabilityFlow"/> with <see cref="OdeOptions.Latent"/> set to the
    /// result (and the same solver options) decodes it. The latent has the data's dtype and device
    /// (<see cref="SamplerOptions.Dtype"/> and <see cref="SamplerOptions.Device"/> are not used);
    /// <see cref="OdeOptions.Latent"/> must be null and <see cref="OdeOptions.Denoise"/> false.
    /// </summary>
    /// <param name="sde">The SDE.</param>
    /// <param name="model">The model (see <see cref="ProbabilityFlow"/>).</param>
    /// <param name="data">Data, batch first; not modified.</param>
    /// <param name="options">Solver options.</param>
    /// <returns>The latents and the number of model evaluations.</returns>
    /// <exception cref="ArgumentException">An option or the data is invalid.</exception>
    /// <exception cref="InvalidOperationException">The adaptive solver exhausted MaxSteps or its step size underflowed.</exception>
    public static EncodeResult Encode(Sde sde, Func<Tensor, Tensor, Tensor> model, Tensor data, OdeOptions options)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Latent is not null)
            throw new ArgumentException("options.Latent must be null for Encode (the data are the starting point).", "options.Latent");
        if (options.Denoise)
            throw new ArgumentException("options.Denoise must be false for Encode (denoising applies to sampling).", "options.Denoise");
        var method = OdeInterop.Method(options);
        var coreModel = Interop.ToModel(model, options.Prediction);
        var schedule = ScoreSde.ScheduleModule.uniform(options.Steps, options.Eps);
        return Interop.Core(() =>
        {
            var result = ScoreSde.Sampler.encode(sde.Core, coreModel, method, schedule, data);
            return new EncodeResult(result.Latent, result.Nfe);
        }, ("x0", "data"));
    }
}

/// <summary>Conversions of the ODE options to the core's values (the core checks them).</summary>
internal static class OdeInterop
{
    /// <summary>The core's adaptive settings for the given tolerances, control and step budget.</summary>
    internal static ScoreSde.AdaptiveSettings Adaptive(double rtol, double atol, bool perSample, int maxSteps)
    {
        var d = ScoreSde.AdaptiveOde.defaults;
        var control = perSample ? ScoreSde.StepControl.PerSample : ScoreSde.StepControl.BatchGlobal;
        return new ScoreSde.AdaptiveSettings(rtol, atol, control, d.InitialStep, d.MinStep, d.MaxStep, maxSteps,
                                             d.Safety, d.MinFactor, d.MaxFactor, d.PiBeta, d.Observer);
    }

    /// <summary>The core's ODE method for the options.</summary>
    internal static ScoreSde.OdeMethod Method(OdeOptions options) => options.Solver switch
    {
        OdeSolver.Euler => ScoreSde.OdeMethod.NewFixedStep(ScoreSde.OdeSolver.Euler),
        OdeSolver.Heun => ScoreSde.OdeMethod.NewFixedStep(ScoreSde.OdeSolver.Heun),
        OdeSolver.Rk4 => ScoreSde.OdeMethod.NewFixedStep(ScoreSde.OdeSolver.Rk4),
        OdeSolver.Dopri5 => ScoreSde.OdeMethod.NewDopri5(Adaptive(options.Rtol, options.Atol, options.PerSampleStepControl, options.MaxSteps)),
        _ => throw new ArgumentOutOfRangeException("options.Solver", options.Solver, $"options.Solver is not a known ODE solver (got {options.Solver}).")
    };
}
