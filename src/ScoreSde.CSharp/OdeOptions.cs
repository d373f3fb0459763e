using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>Solvers of the probability-flow ODE.</summary>
public enum OdeSolver
{
    /// <summary>Forward Euler on <see cref="OdeOptions.Steps"/> uniform steps (order 1).</summary>
    Euler,
    /// <summary>Heun's method on <see cref="OdeOptions.Steps"/> uniform steps (order 2, two evaluations per step).</summary>
    Heun,
    /// <summary>The classical Runge-Kutta method on <see cref="OdeOptions.Steps"/> uniform steps (order 4, four evaluations per step).</summary>
    Rk4,
    /// <summary>Adaptive Dormand-Prince 5(4) with tolerances <see cref="OdeOptions.Rtol"/> and <see cref="OdeOptions.Atol"/> (the paper's RK45).</summary>
    Dopri5,
}

/// <summary>How the divergence of the probability-flow drift is computed for likelihoods.</summary>
public enum DivergenceEstimator
{
    /// <summary>The exact trace of the Jacobian: one backward pass per data dimension (small dimensions only).</summary>
    Exact,
    /// <summary>Hutchinson's estimate with Rademacher (+1/-1) probe vectors: one backward pass per probe.</summary>
    HutchinsonRademacher,
    /// <summary>Hutchinson's estimate with standard normal probe vectors: one backward pass per probe.</summary>
    HutchinsonGaussian,
}

/// <summary>Options of <see cref="Sampler.ProbabilityFlow"/> and <see cref="Sampler.Encode"/>.</summary>
public sealed class OdeOptions : SamplerOptions
{
    /// <summary>The ODE solver (default <see cref="OdeSolver.Dopri5"/>).</summary>
    public OdeSolver Solver { get; set; } = OdeSolver.Dopri5;
    /// <summary>Steps of a fixed-step solver on a uniform grid between 1 and <see cref="Eps"/> (default 100; at least 1).</summary>
    public int Steps { get; set; } = 100;
    /// <summary>Relative tolerance of <see cref="OdeSolver.Dopri5"/> (default 1e-5; in (0, 1)).</summary>
    public double Rtol { get; set; } = 1e-5;
    /// <summary>Absolute tolerance of <see cref="OdeSolver.Dopri5"/> (default 1e-5; positive).</summary>
    public double Atol { get; set; } = 1e-5;
    /// <summary>One error norm and step size per sample (true: a sample's result does not depend on its
    /// batch-mates) or one for the whole batch (false, the default: the paper's solver, fewer model
    /// evaluations). Used by <see cref="OdeSolver.Dopri5"/>.</summary>
    public bool PerSampleStepControl { get; set; }
    /// <summary>Most attempted steps of <see cref="OdeSolver.Dopri5"/> before it gives up with an error (default 10,000).</summary>
    public int MaxSteps { get; set; } = 10_000;
    /// <summary>The time the ODE is integrated down to (sampling) or up from (encoding); default 1e-3, in (0, 1).</summary>
    public double Eps { get; set; } = 1e-3;
    /// <summary>Finish sampling with Tweedie's denoising step at <see cref="Eps"/> (one more model evaluation). Default false.</summary>
    public bool Denoise { get; set; }
    /// <summary>Start sampling from this latent instead of prior noise (shape must equal the sample shape; it is
    /// copied to <see cref="SamplerOptions.Dtype"/> and <see cref="SamplerOptions.Device"/>, never modified). Default null.</summary>
    public Tensor? Latent { get; set; }
}

/// <summary>Options of <see cref="Likelihood.Compute"/>.</summary>
public sealed class LikelihoodOptions : ModelOptions
{
    /// <summary>How the divergence is computed (default <see cref="DivergenceEstimator.Exact"/>).</summary>
    public DivergenceEstimator Estimator { get; set; } = DivergenceEstimator.Exact;
    /// <summary>Hutchinson probe vectors per sample, averaged (default 1; at least 1). Used by the Hutchinson
    /// estimators only.</summary>
    public int Probes { get; set; } = 1;
    /// <summary>Relative tolerance of the Dormand-Prince 5(4) solver (default 1e-5; in (0, 1)).</summary>
    public double Rtol { get; set; } = 1e-5;
    /// <summary>Absolute tolerance of the Dormand-Prince 5(4) solver (default 1e-5; positive).</summary>
    public double Atol { get; set; } = 1e-5;
    /// <summary>One error norm and step size per sample (true, the default: a sample's log-likelihood does not
    /// depend on its batch-mates) or one for the whole batch (false).</summary>
    public bool PerSampleStepControl { get; set; } = true;
    /// <summary>Most attempted solver steps before giving up with an error (default 10,000).</summary>
    public int MaxSteps { get; set; } = 10_000;
    /// <summary>The data are taken as x(Eps) and the ODE is integrated from Eps to 1 (default 1e-5, in (0, 1)).</summary>
    public double Eps { get; set; } = 1e-5;
    /// <summary>Added to the bits per dimension: log2 of the dequantisation bin count, e.g. 7 for 8-bit data
    /// scaled to [-1, 1] (default 0).</summary>
    public double DequantizationOffset { get; set; }
}

/// <summary>Log-likelihoods of a batch of data.</summary>
public sealed class LikelihoodResult : IDisposable
{
    internal LikelihoodResult(Tensor logLikelihood, Tensor bitsPerDim, Tensor latent, int nfe)
    {
        LogLikelihood = logLikelihood;
        BitsPerDim = bitsPerDim;
        Latent = latent;
        Nfe = nfe;
    }

    /// <summary>log p(x) per sample in nats, shape [batch].</summary>
    public Tensor LogLikelihood { get; }

    /// <summary>Bits per dimension per sample: -log p(x) / (D ln 2) + the dequantisation offset, shape [batch].</summary>
    public Tensor BitsPerDim { get; }

    /// <summary>The latent x(1) each sample maps to along the ODE (shaped like the data).</summary>
    public Tensor Latent { get; }

    /// <summary>Number of (batched) model evaluations.</summary>
    public int Nfe { get; }

    /// <summary>Disposes the three tensors.</summary>
    public void Dispose()
    {
        LogLikelihood.Dispose();
        BitsPerDim.Dispose();
        Latent.Dispose();
    }
}

/// <summary>Latents of a batch of data under the probability-flow ODE.</summary>
public sealed class EncodeResult
{
    internal EncodeResult(Tensor latent, int nfe)
    {
        Latent = latent;
        Nfe = nfe;
    }

    /// <summary>The latents x(1), shaped like the data; the caller owns (and disposes) them.</summary>
    public Tensor Latent { get; }

    /// <summary>Number of (batched) model evaluations.</summary>
    public int Nfe { get; }
}
