using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>Sampling entry points over the F# core's single entry point (<c>ScoreSde.Sampler.sample</c>).</summary>
public static partial class Sampler
{
    /// <summary>
    /// The predictor-corrector sampler (Song et al. 2021, Algorithm 1): starts from a draw of the SDE's
    /// prior and alternates corrector and predictor steps on a uniform grid from 1 down to eps.
    /// </summary>
    /// <param name="sde">The SDE (<see cref="VpSde"/>, <see cref="SubVpSde"/> or <see cref="VeSde"/>).</param>
    /// <param name="model">The model, called as model(x, t) with t holding one time per batch
    /// element in [eps, 1]; returns a tensor shaped like x (a noise prediction unless
    /// <see cref="ModelOptions.Prediction"/> says otherwise). It must not modify x; tensors it creates
    /// during a call are disposed by the sampler.</param>
    /// <param name="shape">Sample shape, batch first.</param>
    /// <param name="options">Sampler options.</param>
    /// <param name="generator">Source of all randomness (the prior draw first, then every step's
    /// noise; with <see cref="SamplerOptions.Noise"/> = PerSample or Fast it only seeds that source unless
    /// <see cref="SamplerOptions.NoiseSeed"/> is given). Without one, a private generator seeded from system
    /// entropy is used.</param>
    /// <returns>The samples and the number of model evaluations.</returns>
    /// <exception cref="ArgumentException">An option is out of range; the message names it (options.Name) and its value.</exception>
    public static SampleResult PredictorCorrector(Sde sde, Func<Tensor, Tensor, Tensor> model, long[] shape,
                                                  PcOptions options, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
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
        var sampling = new ScoreSde.Sampling(
            ScoreSde.Method.NewPredictorCorrector(predictor, corrector),
            ScoreSde.ScheduleModule.uniform(options.Steps, options.Eps),
            options.Denoise ? ScoreSde.Finish.LastMean : ScoreSde.Finish.NoFinish,
            null, null, true);
        return Interop.Sample(sde, model, shape, options, sampling, null, generator);
    }
}
