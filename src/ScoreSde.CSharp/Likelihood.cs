using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, appendix D.2).</summary>
public static class Likelihood
{
    /// <summary>
    /// log p(x) per sample: integrates [x, delta log p] from <see cref="LikelihoodOptions.Eps"/> up to t = 1 with
    /// adaptive Dormand-Prince 5(4), the divergence of the probability-flow drift from autograd (exact trace or
    /// Hutchinson's estimate), and adds the prior's log-density at the latent.
    /// </summary>
    /// <param name="sde">The SDE.</param>
    /// <param name="model">The model, called as model(x, t) with t holding one time per batch element. It must be
    /// differentiable in x (gradients are enabled around each call); it must not modify x.</param>
    /// <param name="data">Data, batch first (float32 or float64; the results take its dtype and device); not modified.
    /// Dequantise discrete data first (add uniform noise) and set <see cref="LikelihoodOptions.DequantizationOffset"/>.</param>
    /// <param name="options">Options.</param>
    /// <param name="generator">Source of the Hutchinson probe vectors (unused by the exact estimator). Without one,
    /// a private generator seeded from system entropy is used.</param>
    /// <returns>Log-likelihoods (nats), bits per dimension, latents and the number of model evaluations.</returns>
    /// <exception cref="ArgumentException">An option or the data is invalid; the message names it.</exception>
    /// <exception cref="InvalidOperationException">The model is not differentiable in x, or the solver failed.</exception>
    public static LikelihoodResult Compute(Sde sde, Func<Tensor, Tensor, Tensor> model, Tensor data,
                                           LikelihoodOptions options, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(options);
        var divergence = options.Estimator switch
        {
            DivergenceEstimator.Exact => ScoreSde.Divergence.Exact,
            DivergenceEstimator.HutchinsonRademacher => ScoreSde.Divergence.NewHutchinson(ScoreSde.Probe.Rademacher, options.Probes),
            DivergenceEstimator.HutchinsonGaussian => ScoreSde.Divergence.NewHutchinson(ScoreSde.Probe.Gaussian, options.Probes),
            _ => throw new ArgumentOutOfRangeException("options.Estimator", options.Estimator, $"options.Estimator is not a known estimator (got {options.Estimator}).")
        };
        var adaptive = OdeInterop.Adaptive(options.Rtol, options.Atol, options.PerSampleStepControl, options.MaxSteps);
        var settings = new ScoreSde.LikelihoodSettings(ScoreSde.OdeMethod.NewDopri5(adaptive),
                                                       ScoreSde.ScheduleModule.uniform(1, options.Eps),
                                                       divergence, options.DequantizationOffset);
        var coreModel = Interop.ToModel(model, options.Prediction);
        return Interop.Core(() =>
        {
            var noise = Interop.NoiseFor(generator, data.device);
            var r = ScoreSde.Likelihood.compute(sde.Core, coreModel, settings, noise, data);
            return new LikelihoodResult(r.LogLikelihood, r.BitsPerDim, r.Latent, r.Nfe);
        }, ("x", "data"));
    }
}
