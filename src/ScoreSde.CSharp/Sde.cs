using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>
/// One of the three SDEs of Song et al. (2021), each linear in x: dx = f(t) x dt + g(t) dw on t in [0, 1],
/// with the marginal x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I). <see cref="VpSde"/>, <see cref="SubVpSde"/> and
/// <see cref="VeSde"/> are the concrete ones; every sampler and <see cref="Likelihood.Compute"/> take any of them.
/// </summary>
public abstract class Sde
{
    private protected Sde(ScoreSde.Sde core)
    {
        Core = core;
    }

    internal ScoreSde.Sde Core { get; }

    /// <summary>The short name used on the command line and in model files: "vp", "subvp" or "ve".</summary>
    public string Name => ScoreSde.SdeModule.name(Core);

    /// <summary>The marginal mean coefficient alpha(t).</summary>
    /// <param name="t">Time in [0, 1].</param>
    public double Alpha(double t) => ScoreSde.SdeModule.alphaAt(Core, t);

    /// <summary>The marginal standard deviation sigma(t).</summary>
    /// <param name="t">Time in [0, 1].</param>
    public double Sigma(double t) => ScoreSde.SdeModule.sigmaAt(Core, t);

    /// <summary>The half log-SNR lambda(t) = log alpha(t) - log sigma(t), strictly decreasing in t.</summary>
    /// <param name="t">Time in [0, 1].</param>
    public double Lambda(double t) => ScoreSde.SdeModule.lambdaAt(Core, t);

    /// <summary>The inverse of <see cref="Lambda"/>, in closed form.</summary>
    /// <param name="lambda">A half log-SNR.</param>
    public double TimeOfLambda(double lambda) => ScoreSde.SdeModule.timeOfLambda(Core, lambda);

    /// <summary>The linear drift coefficient f(t) (the drift is f(t) x).</summary>
    /// <param name="t">Time in [0, 1].</param>
    public double Drift(double t) => ScoreSde.SdeModule.driftAt(Core, t);

    /// <summary>The squared diffusion coefficient g(t)^2.</summary>
    /// <param name="t">Time in [0, 1].</param>
    public double DiffusionSquared(double t) => ScoreSde.SdeModule.diffusionSquaredAt(Core, t);

    /// <summary>The standard deviation of the prior N(0, std^2 I): 1, or sigma_max for the VE SDE.</summary>
    public double PriorStd => ScoreSde.SdeModule.priorStd(Core);

    /// <summary>x_t = alpha_t x_0 + sigma_t z; t is 0-d or holds one time per batch element.</summary>
    /// <param name="x0">Clean samples, batch first.</param>
    /// <param name="t">Times.</param>
    /// <param name="z">Standard normal noise shaped like x0.</param>
    /// <returns>A new tensor; the inputs are not modified.</returns>
    public Tensor Perturb(Tensor x0, Tensor t, Tensor z)
    {
        ArgumentNullException.ThrowIfNull(x0);
        ArgumentNullException.ThrowIfNull(t);
        ArgumentNullException.ThrowIfNull(z);
        return ScoreSde.SdeModule.perturb(Core, x0, t, z);
    }

    /// <summary>Log-density of the prior, one value per sample.</summary>
    /// <param name="z">Latents, batch first.</param>
    public Tensor PriorLogProbability(Tensor z)
    {
        ArgumentNullException.ThrowIfNull(z);
        return ScoreSde.SdeModule.priorLogp(Core, z);
    }
}

/// <summary>An SDE on the linear beta schedule beta(t) = betaMin + t (betaMax - betaMin): the base of
/// <see cref="VpSde"/> and <see cref="SubVpSde"/>.</summary>
public abstract class BetaScheduleSde : Sde
{
    private protected BetaScheduleSde(ScoreSde.Sde core, double betaMin, double betaMax) : base(core)
    {
        _schedule = new ScoreSde.VpSchedule(betaMin, betaMax);
    }

    private readonly ScoreSde.VpSchedule _schedule;

    /// <summary>beta(0).</summary>
    public double BetaMin => _schedule.BetaMin;

    /// <summary>beta(1).</summary>
    public double BetaMax => _schedule.BetaMax;

    /// <summary>beta(t).</summary>
    /// <param name="t">Time in [0, 1].</param>
    public double Beta(double t) => ScoreSde.VpScheduleModule.betaAt(_schedule, t);
}

/// <summary>The variance-preserving SDE with a linear schedule, beta(t) = betaMin + t (betaMax - betaMin):
/// f = -beta / 2, g^2 = beta, alpha^2 + sigma^2 = 1, prior N(0, I).</summary>
public sealed class VpSde : BetaScheduleSde
{
    /// <summary>Creates the SDE.</summary>
    /// <param name="betaMin">beta(0), positive (default 0.1).</param>
    /// <param name="betaMax">beta(1), at least betaMin (default 20).</param>
    /// <exception cref="ArgumentException">betaMin is not positive or betaMax is below betaMin.</exception>
    public VpSde(double betaMin = 0.1, double betaMax = 20.0)
        : base(ScoreSde.SdeModule.vp(betaMin, betaMax), betaMin, betaMax)
    {
    }
}

/// <summary>The sub-VP SDE (Song et al. 2021): the VP drift with g^2 = beta(t) (1 - alpha^4), so
/// sigma(t) = 1 - alpha(t)^2 (below the VP's); prior N(0, I). Its likelihoods were the paper's best.</summary>
public sealed class SubVpSde : BetaScheduleSde
{
    /// <summary>Creates the SDE.</summary>
    /// <param name="betaMin">beta(0), positive (default 0.1).</param>
    /// <param name="betaMax">beta(1), at least betaMin (default 20).</param>
    /// <exception cref="ArgumentException">betaMin is not positive or betaMax is below betaMin.</exception>
    public SubVpSde(double betaMin = 0.1, double betaMax = 20.0)
        : base(ScoreSde.SdeModule.subVp(betaMin, betaMax), betaMin, betaMax)
    {
    }
}

/// <summary>The variance-exploding SDE (Song et al. 2021): sigma(t) = sigmaMin (sigmaMax / sigmaMin)^t,
/// no drift, g^2 = d sigma^2 / dt, alpha = 1, prior N(0, sigmaMax^2 I).</summary>
public sealed class VeSde : Sde
{
    /// <summary>Creates the SDE.</summary>
    /// <param name="sigmaMin">sigma(0), positive (default 0.01).</param>
    /// <param name="sigmaMax">sigma(1), above sigmaMin (default 50).</param>
    /// <exception cref="ArgumentException">sigmaMin is not positive or sigmaMax is not above it.</exception>
    public VeSde(double sigmaMin = 0.01, double sigmaMax = 50.0) : base(ScoreSde.SdeModule.ve(sigmaMin, sigmaMax))
    {
        SigmaMin = sigmaMin;
        SigmaMax = sigmaMax;
    }

    /// <summary>sigma(0).</summary>
    public double SigmaMin { get; }

    /// <summary>sigma(1).</summary>
    public double SigmaMax { get; }
}
