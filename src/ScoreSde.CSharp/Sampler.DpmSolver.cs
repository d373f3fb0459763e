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
    /// <see cref="ModelOptions.Prediction"/> says otherwise). It must not modify x.</param>
    /// <param name="shape">Sample shape, batch first.</param>
    /// <param name="options">Solver options.</param>
    /// <param name="generator">Source of the prior draw when <see cref="DpmSolverOptions.Latent"/> is null
    /// (the solver itself is deterministic). Without one, a private generator seeded from system entropy is used.</param>
    /// <returns>The samples (owned by the caller) and the number of model evaluations.</returns>
    /// <exception cref="ArgumentException">An option is out of range; the message names it and its value.</exception>
    public static SampleResult DpmSolver(Sde sde, Func<Tensor, Tensor, Tensor> model, long[] shape,
                                         DpmSolverOptions options, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        var sampling = DpmSampling(options);
        return Interop.Sample(sde, model, shape, options, sampling, options.Latent, generator, convertLatent: false);
    }

    /// <summary>The options as the core's sampling configuration (enum conversions only: the core checks the values).</summary>
    private static ScoreSde.Sampling DpmSampling(DpmSolverOptions options)
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
        if (options.Times is { } times)
            grid = ScoreSde.TimeGrid.NewExplicit((double[])times.Clone());
        var defaults = ScoreSde.DpmSolver.adaptiveDefaults;
        var method = options.Method switch
        {
            DpmSolverMethod.SingleStep => ScoreSde.DpmMethod.SingleStep,
            DpmSolverMethod.MultiStep => ScoreSde.DpmMethod.MultiStep,
            DpmSolverMethod.Adaptive => ScoreSde.DpmMethod.NewAdaptive(new ScoreSde.DpmAdaptiveSettings(
                options.Rtol, options.Atol, defaults.InitialStep, defaults.Safety, options.MaxEvaluations)),
            _ => throw OutOfRange(nameof(options.Method), options.Method, "SingleStep, MultiStep or Adaptive"),
        };
        var thresholding = options.Thresholding switch
        {
            Thresholding.None => ScoreSde.Thresholding.NoThresholding,
            Thresholding.Static => ScoreSde.Thresholding.NewStatic(options.ThresholdMax),
            Thresholding.Dynamic => ScoreSde.Thresholding.NewDynamic(options.ThresholdQuantile, options.ThresholdMax),
            _ => throw OutOfRange(nameof(options.Thresholding), options.Thresholding, "None, Static or Dynamic"),
        };
        var lowerOrderFinal = options.LowerOrderFinal switch
        {
            LowerOrderFinal.BelowSteps => ScoreSde.LowerOrderFinal.NewBelowSteps(options.LowerOrderFinalBelowSteps),
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
        var settings = new ScoreSde.DpmSolverSettings(algorithm, method, options.Order, lowerOrderFinal, thirdOrder, arithmetic,
                                                      thresholding);
        return new ScoreSde.Sampling(
            ScoreSde.Method.NewDpmSolver(settings),
            new ScoreSde.Schedule(grid, options.Steps, options.Eps),
            options.Denoise ? ScoreSde.Finish.Tweedie : ScoreSde.Finish.NoFinish,
            null, null, true);
    }
}
