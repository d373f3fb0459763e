using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>The variance-preserving SDE with a linear schedule, beta(t) = betaMin + t (betaMax - betaMin), t in [0, 1].</summary>
public sealed class VpSde
{
    internal ScoreSde.VpSde Core { get; }

    /// <summary>Creates the SDE.</summary>
    /// <param name="betaMin">beta(0), positive (default 0.1).</param>
    /// <param name="betaMax">beta(1), at least betaMin (default 20).</param>
    /// <exception cref="ArgumentException">betaMin is not positive or betaMax is below betaMin.</exception>
    public VpSde(double betaMin = 0.1, double betaMax = 20.0)
    {
        Core = ScoreSde.VpSdeModule.create(betaMin, betaMax);
    }

    /// <summary>beta(0).</summary>
    public double BetaMin => Core.BetaMin;

    /// <summary>beta(1).</summary>
    public double BetaMax => Core.BetaMax;

    /// <summary>beta(t).</summary>
    public double Beta(double t) => ScoreSde.VpSdeModule.betaAt(Core, t);

    /// <summary>The marginal mean coefficient alpha_t = exp(m(t)).</summary>
    public double Alpha(double t) => ScoreSde.VpSdeModule.alphaAt(Core, t);

    /// <summary>The marginal standard deviation sigma_t = sqrt(-expm1(2 m(t))).</summary>
    public double Sigma(double t) => ScoreSde.VpSdeModule.sigmaAt(Core, t);

    /// <summary>The half log-SNR lambda_t = log alpha_t - log sigma_t.</summary>
    public double Lambda(double t) => ScoreSde.VpSdeModule.lambdaAt(Core, t);

    /// <summary>x_t = alpha_t x_0 + sigma_t z; t is 0-d or holds one time per batch element.</summary>
    /// <returns>A new tensor; the inputs are not modified.</returns>
    public Tensor Perturb(Tensor x0, Tensor t, Tensor z)
    {
        ArgumentNullException.ThrowIfNull(x0);
        ArgumentNullException.ThrowIfNull(t);
        ArgumentNullException.ThrowIfNull(z);
        return ScoreSde.VpSdeModule.perturb(Core, x0, t, z);
    }

    /// <summary>Log-density of the prior N(0, I), one value per sample.</summary>
    public Tensor PriorLogProbability(Tensor z)
    {
        ArgumentNullException.ThrowIfNull(z);
        return ScoreSde.VpSdeModule.priorLogp(z);
    }
}
