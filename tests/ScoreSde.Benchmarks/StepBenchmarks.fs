/// One reverse-SDE Euler-Maruyama step from a precomputed model output, four ways, against the floor
/// of drawing the step's noise alone.
namespace ScoreSde.Benchmarks

open System
open BenchmarkDotNet.Attributes
open TorchSharp
open ScoreSde
open ScoreSde.Benchmarks.Setup

[<MemoryDiagnoser>]
type StepBenchmarks() =
    let steps = 1000
    let mutable shape: int64[] = [||]
    let mutable g: torch.Generator = null
    let mutable x: torch.Tensor = null
    let mutable out: torch.Tensor = null
    let mutable t: torch.Tensor = null
    let mutable state: torch.Tensor = null
    let mutable z: torch.Tensor = null
    let mutable scheduler: ScoreSde.CSharp.ScoreSdeVpScheduler = Unchecked.defaultof<_>
    let mutable noise: Noise = Unchecked.defaultof<_>
    let mutable fastNoise: Noise = Unchecked.defaultof<_>
    let sde = Sde.standardVp
    // The step of the benchmark: from t = 0.5 with diffusers' dt = 1 / len(timesteps).
    let t0 = 0.5
    let s0 = t0 - 1.0 / float steps

    /// Tensor shape, float32.
    [<ParamsSource("Shapes")>]
    member val Shape = "" with get, set

    /// libtorch intra-op threads.
    [<ParamsSource("ThreadCounts")>]
    member val Threads = 1 with get, set

    member _.Shapes = stepShapes
    member _.ThreadCounts = threadCounts

    [<GlobalSetup>]
    member this.Setup() =
        setThreads this.Threads
        shape <- parseShape this.Shape
        g <- new torch.Generator(0UL, torch.CPU)
        x <- torch.randn (shape, generator = g)
        out <- torch.randn (shape, generator = g)
        // One time per batch element, all equal: the usual `timesteps[i] * ones(B)` of a diffusers loop.
        t <- torch.full ([| shape.[0] |], Scalar.op_Implicit (float32 t0), dtype = torch.float32)
        state <- x.clone ()
        z <- torch.empty_like (x)
        scheduler <- ScoreSde.CSharp.ScoreSdeVpScheduler()
        scheduler.SetTimesteps(steps)
        noise <- Noise.fromGenerator g
        fastNoise <- Noise.fast 0L

    [<GlobalCleanup>]
    member _.Cleanup() =
        for v in [ x; out; t; state; z ] do
            v.Dispose()
        g.Dispose()

    /// The floor: torch.randn of the step's shape from a generator (a fresh tensor, as the step makes).
    [<Benchmark(Baseline = true)>]
    member _.NoiseFloor() =
        use n = torch.randn (shape, generator = g)
        ()

    /// The samplers' noise: the generator's stream filled in place into a reused buffer.
    [<Benchmark>]
    member _.NoiseFillGenerator() = noise.Fill z

    /// The optional faster source (Noise.fast: managed ziggurat, counter-based, parallel over blocks).
    [<Benchmark>]
    member _.NoiseFillFast() = fastNoise.Fill z

    /// The C# facade's ScoreSdeVpScheduler.StepPred (argument checks, reading t, two fresh results).
    [<Benchmark>]
    member _.StepPred() =
        let r = scheduler.StepPred(out, x, t, g)
        r.PrevSample.Dispose()
        r.PrevSampleMean.Dispose()

    /// The core step on fresh tensors from a model output (Predictor.stepWithOutput, under StepPred).
    [<Benchmark>]
    member _.CoreStepFresh() =
        let r = Predictor.stepWithOutput sde Predictor.EulerMaruyama ModelOutput.Noise out x [| t0 |] [| s0 |] noise
        r.Sample.Dispose()
        r.Mean.Dispose()

    /// The samplers' in-place kernel: x <- a x + b out, then x <- x + c z on a reused noise buffer.
    /// (The state is its own model output here, eps = x, which keeps it bounded over many calls.)
    [<Benchmark>]
    member _.CoreStepInPlace() =
        let a, b, c = Predictor.outputCoefficients sde Predictor.EulerMaruyama ModelOutput.Noise t0 s0
        Kernel.axpbyNoise state a state b z c noise

    /// The Python formula of diffusers' step_pred (REFERENCE.md) transliterated op by op: a fresh
    /// tensor per operation, in a dispose scope.
    [<Benchmark>]
    member _.NaiveTransliteration() =
        use scope = torch.NewDisposeScope()
        let bmin, bmax = VpSchedule.standard.BetaMin, VpSchedule.standard.BetaMax
        let logMeanCoeff = t.pow (Scalar.op_Implicit 2.0) * (-0.25 * (bmax - bmin)) - t * (0.5 * bmin)
        let std = torch.sqrt (1.0 - torch.exp (logMeanCoeff * 2.0))
        let mutable std = std.flatten ()
        while std.dim () < out.dim () do
            std <- std.unsqueeze (-1L)
        let score = -out / std
        let dt = -1.0 / float steps
        let mutable betaT = t * (bmax - bmin) + bmin
        betaT <- betaT.flatten ()
        while betaT.dim () < x.dim () do
            betaT <- betaT.unsqueeze (-1L)
        let drift = betaT * -0.5 * x
        let diffusion = torch.sqrt (betaT)
        let drift = drift - diffusion.pow (Scalar.op_Implicit 2.0) * score
        let xMean = x + drift * dt
        let z = torch.randn (x.shape, dtype = x.dtype, generator = g)
        let sample = xMean + diffusion * Math.Sqrt(-dt) * z
        sample.Dispose()
        xMean.Dispose()
