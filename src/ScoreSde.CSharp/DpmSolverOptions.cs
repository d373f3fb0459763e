using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>How the DPM solvers step.</summary>
public enum DpmSolverMethod
{
    /// <summary>Single-step: an order-k step evaluates the model k times (DPM-Solver-k of the first paper).</summary>
    SingleStep,
    /// <summary>Multistep: one model evaluation per step, reusing the previous ones (DPM-Solver++(2M/3M)).</summary>
    MultiStep,
    /// <summary>Adaptive step size in log-SNR with tolerances <see cref="DpmSolverOptions.Rtol"/> and
    /// <see cref="DpmSolverOptions.Atol"/> (orders 2 and 3); the number of evaluations is the solver's choice.</summary>
    Adaptive,
}

/// <summary>Which model output the solver expands.</summary>
public enum DpmSolverAlgorithm
{
    /// <summary>DPM-Solver (Lu et al. 2022, arXiv 2206.00927): the noise prediction.</summary>
    DpmSolver,
    /// <summary>DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095): the data prediction.</summary>
    DpmSolverPlusPlus,
}

/// <summary>How the solver's time points are placed between 1 and eps.</summary>
public enum TimeGrid
{
    /// <summary>Uniform in t.</summary>
    TimeUniform,
    /// <summary>Uniform in the half log-SNR lambda = log(alpha / sigma).</summary>
    LogSnr,
    /// <summary>Uniform in sqrt(t) (t quadratic in the step index, denser near eps).</summary>
    TimeQuadratic,
}

/// <summary>How DPM-Solver++ corrects its data predictions (pixel data in a known range).</summary>
public enum Thresholding
{
    /// <summary>No correction (default).</summary>
    None,
    /// <summary>Clamp x_0 to [-<see cref="DpmSolverOptions.ThresholdMax"/>, <see cref="DpmSolverOptions.ThresholdMax"/>].</summary>
    Static,
    /// <summary>Imagen's dynamic thresholding: per sample, s = max(the <see cref="DpmSolverOptions.ThresholdQuantile"/>
    /// quantile of |x_0|, <see cref="DpmSolverOptions.ThresholdMax"/>); x_0 is clamped to [-s, s] and scaled by
    /// ThresholdMax / s.</summary>
    Dynamic,
}

/// <summary>Options of <see cref="Sampler.DpmSolver"/>.</summary>
public sealed class DpmSolverOptions : SamplerOptions
{
    /// <summary>The number of model evaluations, used exactly (default 20); at least 1 (2 with
    /// <see cref="Denoise"/>). Not used by the adaptive method or with <see cref="Times"/>.</summary>
    public int Steps { get; set; } = 20;
    /// <summary>The solver order: 1, 2 or 3 (default 3); 2 or 3 for the adaptive method.</summary>
    public int Order { get; set; } = 3;
    /// <summary>Single-step, multistep or adaptive (default <see cref="DpmSolverMethod.MultiStep"/>).</summary>
    public DpmSolverMethod Method { get; set; } = DpmSolverMethod.MultiStep;
    /// <summary>DPM-Solver or DPM-Solver++ (default <see cref="DpmSolverAlgorithm.DpmSolverPlusPlus"/>).</summary>
    public DpmSolverAlgorithm Algorithm { get; set; } = DpmSolverAlgorithm.DpmSolverPlusPlus;
    /// <summary>The time grid (default <see cref="TimeGrid.LogSnr"/>).</summary>
    public TimeGrid Grid { get; set; } = TimeGrid.LogSnr;
    /// <summary>An explicit grid instead of <see cref="Grid"/>: strictly decreasing times in (0, 1]. It fixes
    /// the evaluations itself (one per interval, plus one with <see cref="Denoise"/>) and the last time.
    /// Default null.</summary>
    public double[]? Times { get; set; }
    /// <summary>Last time of the grid, in (0, 1) (default 1e-3).</summary>
    public double Eps { get; set; } = 1e-3;
    /// <summary>Use lower orders in the final steps, as the papers recommend for few steps (default true).</summary>
    public bool LowerOrderFinal { get; set; } = true;
    /// <summary>Spend the last evaluation on the denoising step x0 = E[x0 | x_eps] (default false).</summary>
    public bool Denoise { get; set; }
    /// <summary>Relative tolerance of the adaptive method (default 0.05, the paper's value for images in [-1, 1]).</summary>
    public double Rtol { get; set; } = 0.05;
    /// <summary>Absolute tolerance of the adaptive method (default 0.0078, the paper's value for images in [-1, 1]).</summary>
    public double Atol { get; set; } = 0.0078;
    /// <summary>The adaptive method stops with an error beyond this many evaluations (default 10,000).</summary>
    public int MaxEvaluations { get; set; } = 10000;
    /// <summary>Correction of the data prediction, DPM-Solver++ only (default <see cref="CSharp.Thresholding.None"/>).</summary>
    public Thresholding Thresholding { get; set; } = Thresholding.None;
    /// <summary>The quantile of |x_0| of <see cref="CSharp.Thresholding.Dynamic"/>, in (0, 1] (default 0.995, Imagen's).</summary>
    public double ThresholdQuantile { get; set; } = 0.995;
    /// <summary>The bound of the thresholding: the clamp of <see cref="CSharp.Thresholding.Static"/>, the smallest
    /// threshold and the output range of <see cref="CSharp.Thresholding.Dynamic"/> (default 1, pixels in [-1, 1]).</summary>
    public double ThresholdMax { get; set; } = 1.0;
    /// <summary>The starting state x_T (not modified); null draws it from N(0, I) with the generator. Its
    /// shape must equal the sample shape; its dtype and device are used instead of <see cref="SamplerOptions.Dtype"/>
    /// and <see cref="SamplerOptions.Device"/>.</summary>
    public Tensor? Latent { get; set; }
}
