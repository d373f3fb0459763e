using Microsoft.FSharp.Core;
using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>How a <see cref="Condition"/> sets the known part of the state while a sampler runs.</summary>
public enum Replacement
{
    /// <summary>The sampler's default: <see cref="Fresh"/> for <see cref="Sampler.PredictorCorrector"/> (the
    /// paper's inpainter), <see cref="FixedLatent"/> for the probability flow and DPM-Solver.</summary>
    Default,
    /// <summary>After every update the known part becomes a fresh draw alpha_t y + sigma_t z of its forward
    /// marginal (Song et al. 2021, App. I.2). Makes the deterministic samplers stochastic; refused by the
    /// adaptive solvers.</summary>
    Fresh,
    /// <summary>One latent z for the known part: the known part follows alpha_t y + sigma_t z and the model is
    /// evaluated with it on that path, so deterministic solvers stay deterministic.</summary>
    FixedLatent,
}

/// <summary>
/// Known values: in the basis of an orthonormal matrix U acting on dimension 1 of a sample (the identity when
/// <see cref="Basis"/> is null), (U x)_i = Values_i wherever Mask_i is nonzero. Inpainting is the identity basis;
/// the paper's colorization is a 3 x 3 channel basis with the grey channel known. Set it as
/// <see cref="SamplerOptions.Condition"/>: every sampler takes it, and the samples' known part is exactly the
/// known values. The paper's predictor-corrector inpainter is an approximation of the exact conditional, and the
/// same replacement on the probability flow and DPM-Solver is a poor one (docs/conditional.md measures both).
/// </summary>
public sealed class Condition
{
    /// <summary>A condition with known values in a basis.</summary>
    /// <param name="values">The known values y in the basis, broadcastable to the sample shape (one per sample or
    /// one for the batch); entries off the mask are ignored. Not modified.</param>
    /// <param name="mask">Nonzero where a coordinate is known; broadcastable to the sample shape. Not modified.</param>
    /// <param name="basis">An orthonormal C x C matrix, C the size of dimension 1 of a sample; null for the identity.</param>
    /// <exception cref="ArgumentNullException"><paramref name="values"/> or <paramref name="mask"/> is null.</exception>
    public Condition(Tensor values, Tensor mask, Tensor? basis = null)
    {
        ArgumentNullException.ThrowIfNull(values);
        ArgumentNullException.ThrowIfNull(mask);
        Values = values;
        Mask = mask;
        Basis = basis;
    }

    /// <summary>Inpainting: the samples equal <paramref name="values"/> wherever <paramref name="mask"/> is nonzero.</summary>
    /// <param name="values">The known values, broadcastable to the sample shape.</param>
    /// <param name="mask">Nonzero where a value is known, broadcastable to the sample shape.</param>
    /// <returns>The condition.</returns>
    public static Condition Inpaint(Tensor values, Tensor mask) => new(values, mask);

    /// <summary>A linear condition: (U x) equals <paramref name="values"/> wherever <paramref name="mask"/> is nonzero.</summary>
    /// <param name="basis">The orthonormal matrix U (C x C, acting on dimension 1).</param>
    /// <param name="values">The known coordinates in the basis, broadcastable to the sample shape.</param>
    /// <param name="mask">Nonzero where a coordinate is known, broadcastable to the sample shape.</param>
    /// <returns>The condition.</returns>
    public static Condition Linear(Tensor basis, Tensor values, Tensor mask)
    {
        ArgumentNullException.ThrowIfNull(basis);
        return new(values, mask, basis);
    }

    /// <summary>The coordinates U x of data x in a basis (dimension 1 transformed): what <see cref="Values"/>
    /// holds for known data.</summary>
    /// <param name="basis">The orthonormal matrix, or null for the identity.</param>
    /// <param name="x">Data, batch first; not modified.</param>
    /// <returns>A new tensor (the caller disposes it).</returns>
    public static Tensor Coordinates(Tensor? basis, Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        return ScoreSde.ConditionModule.coordinates(basis is null ? FSharpOption<Tensor>.None : FSharpOption<Tensor>.Some(basis), x);
    }

    /// <summary>The known values in the basis.</summary>
    public Tensor Values { get; }

    /// <summary>Nonzero where a coordinate is known.</summary>
    public Tensor Mask { get; }

    /// <summary>The orthonormal basis (null: the identity).</summary>
    public Tensor? Basis { get; }

    /// <summary>How the known part is set while sampling (default <see cref="CSharp.Replacement.Default"/>).</summary>
    public Replacement Replacement { get; set; } = Replacement.Default;

    /// <summary>The core's condition (enum conversion only: the core checks the values).</summary>
    internal ScoreSde.Condition ToCore()
    {
        var replacement = Replacement switch
        {
            Replacement.Default => FSharpOption<ScoreSde.Replacement>.None,
            Replacement.Fresh => FSharpOption<ScoreSde.Replacement>.Some(ScoreSde.Replacement.Fresh),
            Replacement.FixedLatent => FSharpOption<ScoreSde.Replacement>.Some(ScoreSde.Replacement.FixedLatent),
            _ => throw new ArgumentOutOfRangeException("options.Condition.Replacement", Replacement,
                $"options.Condition.Replacement must be Default, Fresh or FixedLatent (got {Replacement})."),
        };
        return new ScoreSde.Condition(Values, Mask,
            Basis is null ? FSharpOption<Tensor>.None : FSharpOption<Tensor>.Some(Basis), replacement);
    }
}
