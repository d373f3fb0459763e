using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>Sampling entry points over the F# core.</summary>
public static partial class Sampler
{
    /// <summary>
    /// The predictor-corrector sampler (Song et al. 2021, Algorithm 1): starts from prior noise
    /// N(0, I) and alternates corrector and predictor steps on a uniform grid from 1 down to eps.
    /// </summary>
    /// <param name="sde">The SDE.</param>
    /// <param name="model">The model, called as model(x, t) with t holding one time per batch
    /// element in [eps, 1]; returns a tensor shaped like x (a noise prediction unless
    /// <see cref="PcOptions.Prediction"/> says otherwise). It must not modify x; tensors it creates
    /// during a call are disposed by the sampler.</param>
    /// <param name="shape">Sample shape, batch first.</param>
    /// <param name="options">Sampler options.</param>
    /// <param name="generator">Source of all randomness (the prior draw first, then every step's
    /// noise; with <see cref="PcOptions.Noise"/> = PerSample or Fast it only seeds that source unless
    /// <see cref="PcOptions.NoiseSeed"/> is given). Without one, a private generator seeded from system
    /// entropy is used.</param>
    /// <returns>The samples and the number of model evaluations.</returns>
    public static SampleResult PredictorCorrector(VpSde sde, Func<Tensor, Tensor, Tensor> model, long[] shape,
                                                  PcOptions options, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        Interop.CheckShape(shape);
        Interop.CheckDtype(options.Dtype, "options.Dtype");
        ArgumentNullException.ThrowIfNull(options.Device, "options.Device");
        if (options.Steps < 1)
            throw new ArgumentOutOfRangeException("options.Steps", options.Steps, $"options.Steps must be at least 1 (got {options.Steps}).");
        var predictor = options.Predictor switch
        {
            Predictor.EulerMaruyama => ScoreSde.Predictor.EulerMaruyama,
            Predictor.ReverseDiffusion => ScoreSde.Predictor.ReverseDiffusion,
            Predictor.AncestralSampling => ScoreSde.Predictor.AncestralSampling,
            Predictor.None => ScoreSde.Predictor.NoPredictor,
            _ => throw new ArgumentOutOfRangeException("options.Predictor", options.Predictor, $"options.Predictor is not a known predictor (got {options.Predictor}).")
        };
        var corrector = options.Corrector switch
        {
            Corrector.None => ScoreSde.Corrector.NoCorrector,
            Corrector.Langevin => ScoreSde.Corrector.NewLangevin(new ScoreSde.LangevinSettings(
                options.Snr, options.CorrectorSteps, Interop.ToCore(options.LangevinNorm, "options.LangevinNorm"))),
            Corrector.AnnealedLangevin => ScoreSde.Corrector.NewAnnealedLangevin(new ScoreSde.AnnealedLangevinSettings(options.Snr, options.CorrectorSteps)),
            _ => throw new ArgumentOutOfRangeException("options.Corrector", options.Corrector, $"options.Corrector is not a known corrector (got {options.Corrector}).")
        };
        var settings = new ScoreSde.PcSettings(predictor, corrector, ScoreSde.TimeGrid.Uniform, options.Steps, options.Eps,
                                               options.Denoise, null);
        var coreModel = Interop.ToModel(model, options.Prediction);
        var noise = Interop.NoiseFrom(options.Noise, options.NoiseSeed, generator, options.Device, "options");
        using var xT = ScoreSde.Sampler.prior(shape, options.Dtype, options.Device, noise);
        var result = ScoreSde.Sampler.predictorCorrector(sde.Core, coreModel, settings, noise, xT);
        return new SampleResult(result.Samples, result.Nfe);
    }
}
