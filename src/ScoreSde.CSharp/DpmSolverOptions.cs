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

/// <summary>When a multistep run lowers the orders of its final steps (the last step first order, the one
/// before it at most second).</summary>
public enum LowerOrderFinal
{
    /// <summary>Only when the run has fewer solver steps than <see cref="DpmSolverOptions.LowerOrderFinalBelowSteps"/>
    /// (default 10, dpm_solver_pytorch.py's rule; diffusers' DPMSolverMultistepScheduler uses 15).</summary>
    BelowSteps,
    /// <summary>Whatever the number of steps.</summary>
    Always,
    /// <summary>Full order to the end (for single-step runs whose order divides the budget: every step of
    /// the full order, the published 'singlestep_fixed').</summary>
    Never,
}

/// <summary>The multistep third-order update's second difference.</summary>
public enum DpmThirdOrder
{
    /// <summary>dpm_solver_pytorch.py's update (default): second order formally, the better one at 10 to 20
    /// evaluations (docs/dpm-solver.md).</summary>
    Published,
    /// <summary>The second difference doubled to match the Taylor expansion: third order formally, better
    /// only with many steps.</summary>
    TaylorExact,
}

/// <summary>How the DPM solvers compute their time grid and step coefficients.</summary>
public enum DpmArithmetic
{
    /// <summary>The published float32 arithmetic for float32 samples, float64 for float64 samples (default).</summary>
    PublishedForFloat32,
    /// <summary>dpm_solver_pytorch.py's float32 operations in its order, whatever the samples' dtype: the
    /// published sampler's numbers (its grid ends at 1.0005e-3 for eps = 1e-3).</summary>
    Published,
    /// <summary>float64, sigma from expm1, the grid ending at exactly eps.</summary>
    Float64,
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
    /// <summary>DPM-Solver or DPM-Solver++ (default <see cref="DpmSolverAlgorithm.DpmSolver"/>, the best
    /// published configuration on unguided models by measurement; DPM-Solver++ is the choice for guided
    /// sampling with large guidance scales).</summary>
    public DpmSolverAlgorithm Algorithm { get; set; } = DpmSolverAlgorithm.DpmSolver;
    /// <summary>The time grid (default <see cref="TimeGrid.LogSnr"/>).</summary>
    public TimeGrid Grid { get; set; } = TimeGrid.LogSnr;
    /// <summary>An explicit grid instead of <see cref="Grid"/>: strictly decreasing times in (0, 1]. It fixes
    /// the evaluations itself (one per interval, plus one with <see cref="Denoise"/>) and the last time.
    /// Default null.</summary>
    public double[]? Times { get; set; }
    /// <summary>Last time of the grid, in (0, 1) (default 1e-3).</summary>
    public double Eps { get; set; } = 1e-3;
    /// <summary>When multistep runs use lower orders in the final steps (default
    /// <see cref="CSharp.LowerOrderFinal.BelowSteps"/> with <see cref="LowerOrderFinalBelowSteps"/> = 10, the
    /// published rule); single-step runs split their budget into lower-order final steps unless
    /// <see cref="CSharp.LowerOrderFinal.Never"/> and the order divides it.</summary>
    public LowerOrderFinal LowerOrderFinal { get; set; } = LowerOrderFinal.BelowSteps;
    /// <summary>The step count below which <see cref="CSharp.LowerOrderFinal.BelowSteps"/> lowers the final
    /// orders, at least 1 (default 10; diffusers' scheduler: 15). Counts solver steps, without the
    /// denoising evaluation.</summary>
    public int LowerOrderFinalBelowSteps { get; set; } = 10;
    /// <summary>The multistep third-order update (default <see cref="DpmThirdOrder.Published"/>).</summary>
    public DpmThirdOrder ThirdOrder { get; set; } = DpmThirdOrder.Published;
    /// <summary>The arithmetic of the grid and coefficients (default <see cref="DpmArithmetic.PublishedForFloat32"/>);
    /// the adaptive method always uses float64.</summary>
    public DpmArithmetic Arithmetic { get; set; } = DpmArithmetic.PublishedForFloat32;
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
