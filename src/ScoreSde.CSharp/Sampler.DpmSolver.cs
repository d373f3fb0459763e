using static TorchSharp.torch;

namespace ScoreSde.CSharp;

public static partial class Sampler
{
    /// <summary>
    /// Samples with DPM-Solver or DPM-Solver++ (Lu et al. 2022): exponential integrators of the
    /// probability-flow ODE that reach good samples in 10 to 20 model evaluations. The fixed-step methods
    /// use exactly <see cref="DpmSolverOptions.Steps"/> evaluations.
    /// </summary>
    /// <param name="sde">The SDE.</param>
    /// <param name="model">The model, called as model(x, t) with t holding one time per batch element
    /// (all equal) in [eps, 1]; returns a tensor shaped like x (a noise prediction unless
    /// <see cref="DpmSolverOptions.Prediction"/> says otherwise). It must not modify x.</param>
    /// <param name="shape">Sample shape, batch first.</param>
    /// <param name="options">Solver options.</param>
    /// <param name="generator">Source of the prior draw when <see cref="DpmSolverOptions.Latent"/> is null
    /// (the solver itself is deterministic). Without one, a private generator seeded from system entropy is used.</param>
    /// <returns>The samples (owned by the caller) and the number of model evaluations.</returns>
    /// <exception cref="ArgumentException">An option is out of range; the message names it and its value.</exception>
    public static SampleResult DpmSolver(VpSde sde, Func<Tensor, Tensor, Tensor> model, long[] shape,
                                         DpmSolverOptions options, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        Interop.CheckShape(shape);
        var settings = DpmSettings(sde, options);
        Interop.CheckNoise(options.Noise, "options");
        var coreModel = Interop.ToModel(model, options.Prediction);
        if (options.Latent is { } latent)
        {
            Interop.CheckLatentShape(latent, shape, "options.Latent");
            var r = ScoreSde.DpmSolver.sample(sde.Core, coreModel, settings, latent);
            return new SampleResult(r.Samples, r.Nfe);
        }
        var noise = Interop.NoiseFrom(options.Noise, options.NoiseSeed, generator, options.Device, "options");
        using var xT = ScoreSde.Sampler.prior(shape, options.Dtype, options.Device, noise);
        var result = ScoreSde.DpmSolver.sample(sde.Core, coreModel, settings, xT);
        return new SampleResult(result.Samples, result.Nfe);
    }

    /// <summary>Validates the options (naming each as options.Name) and converts them to core settings.</summary>
    private static ScoreSde.DpmSolverSettings DpmSettings(VpSde sde, DpmSolverOptions options)
    {
        static ArgumentOutOfRangeException OutOfRange(string name, object value, string requirement) =>
            new($"options.{name}", value, $"options.{name} must be {requirement} (got {value}).");

        var algorithm = options.Algorithm switch
        {
            DpmSolverAlgorithm.DpmSolver => ScoreSde.DpmAlgorithm.DpmSolver,
            DpmSolverAlgorithm.DpmSolverPlusPlus => ScoreSde.DpmAlgorithm.DpmSolverPlusPlus,
            _ => throw OutOfRange(nameof(options.Algorithm), options.Algorithm, "DpmSolver or DpmSolverPlusPlus"),
        };
        var grid = options.Grid switch
        {
            TimeGrid.TimeUniform => ScoreSde.TimeGrid.Uniform,
            TimeGrid.LogSnr => ScoreSde.TimeGrid.LogSnr,
            TimeGrid.TimeQuadratic => ScoreSde.TimeGrid.Quadratic,
            _ => throw OutOfRange(nameof(options.Grid), options.Grid, "TimeUniform, LogSnr or TimeQuadratic"),
        };
        bool adaptive = options.Method == DpmSolverMethod.Adaptive;
        if (options.Method is not (DpmSolverMethod.SingleStep or DpmSolverMethod.MultiStep or DpmSolverMethod.Adaptive))
            throw OutOfRange(nameof(options.Method), options.Method, "SingleStep, MultiStep or Adaptive");
        if (adaptive ? options.Order is not (2 or 3) : options.Order is < 1 or > 3)
            throw OutOfRange(nameof(options.Order), options.Order, adaptive ? "2 or 3 for the adaptive method" : "1, 2 or 3");
        if (!double.IsFinite(options.Eps) || options.Eps <= 0 || options.Eps >= 1)
            throw OutOfRange(nameof(options.Eps), options.Eps, "in (0, 1)");
        if (adaptive)
        {
            if (options.Times is not null)
                throw new ArgumentException("options.Times must be null with the adaptive method, which chooses its own steps.", "options.Times");
            if (!double.IsFinite(options.Rtol) || options.Rtol < 0)
                throw OutOfRange(nameof(options.Rtol), options.Rtol, "finite and zero or more");
            if (!double.IsFinite(options.Atol) || options.Atol < 0)
                throw OutOfRange(nameof(options.Atol), options.Atol, "finite and zero or more");
            if (options.Rtol == 0 && options.Atol == 0)
                throw OutOfRange(nameof(options.Atol), options.Atol, "positive when Rtol is 0");
            if (options.MaxEvaluations < 1)
                throw OutOfRange(nameof(options.MaxEvaluations), options.MaxEvaluations, "at least 1");
        }
        else if (options.Times is null && options.Steps < (options.Denoise ? 2 : 1))
        {
            throw OutOfRange(nameof(options.Steps), options.Steps, options.Denoise ? "at least 2 with Denoise" : "at least 1");
        }
        if (options.Times is { } times)
        {
            try
            {
                ScoreSde.TimeGridModule.validate(sde.Core, times);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"options.Times is not a valid grid: {e.Message}", "options.Times", e);
            }
            grid = ScoreSde.TimeGrid.NewExplicit((double[])times.Clone());
        }
        if (options.Latent is { } latent)
        {
            if (!is_floating_point(latent))
                throw new ArgumentException($"options.Latent must be a floating-point tensor (got {latent.dtype}).", "options.Latent");
        }
        else
        {
            Interop.CheckDtype(options.Dtype, "options.Dtype");
            ArgumentNullException.ThrowIfNull(options.Device, "options.Device");
        }
        var method = options.Method switch
        {
            DpmSolverMethod.SingleStep => ScoreSde.DpmMethod.SingleStep,
            DpmSolverMethod.MultiStep => ScoreSde.DpmMethod.MultiStep,
            _ => ScoreSde.DpmMethod.NewAdaptive(new ScoreSde.DpmAdaptiveSettings(
                options.Rtol, options.Atol, ScoreSde.DpmSolver.adaptiveDefaults.InitialStep,
                ScoreSde.DpmSolver.adaptiveDefaults.Safety, options.MaxEvaluations)),
        };
        var lowerOrderFinal = options.LowerOrderFinal switch
        {
            LowerOrderFinal.BelowSteps when options.LowerOrderFinalBelowSteps >= 1 =>
                ScoreSde.LowerOrderFinal.NewBelowSteps(options.LowerOrderFinalBelowSteps),
            LowerOrderFinal.BelowSteps => throw OutOfRange(nameof(options.LowerOrderFinalBelowSteps), options.LowerOrderFinalBelowSteps, "at least 1"),
            LowerOrderFinal.Always => ScoreSde.LowerOrderFinal.Always,
            LowerOrderFinal.Never => ScoreSde.LowerOrderFinal.Never,
            _ => throw OutOfRange(nameof(options.LowerOrderFinal), options.LowerOrderFinal, "BelowSteps, Always or Never"),
        };
        var thirdOrder = options.ThirdOrder switch
        {
            DpmThirdOrder.Published => ScoreSde.DpmThirdOrder.Published,
            DpmThirdOrder.TaylorExact => ScoreSde.DpmThirdOrder.TaylorExact,
            _ => throw OutOfRange(nameof(options.ThirdOrder), options.ThirdOrder, "Published or TaylorExact"),
        };
        var arithmetic = options.Arithmetic switch
        {
            DpmArithmetic.PublishedForFloat32 => ScoreSde.DpmArithmetic.PublishedForFloat32,
            DpmArithmetic.Published => ScoreSde.DpmArithmetic.Published,
            DpmArithmetic.Float64 => ScoreSde.DpmArithmetic.Float64,
            _ => throw OutOfRange(nameof(options.Arithmetic), options.Arithmetic, "PublishedForFloat32, Published or Float64"),
        };
        return new ScoreSde.DpmSolverSettings(algorithm, method, options.Order, grid, options.Steps, options.Eps,
                                              lowerOrderFinal, thirdOrder, arithmetic, options.Denoise,
                                              ScoreSde.Thresholding.NoThresholding, null);
    }
}
