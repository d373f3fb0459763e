/// diffusers' VE scheduler steps through the C# facade (ScoreSdeVeScheduler.StepPred and StepCorrect,
/// float32, 1000 inference steps, at the middle timestep) against the floor of drawing the step's noise
/// alone (its own baseline, named apart from StepBenchmarks' for the report), and the Python class's
/// arithmetic as separate TorchSharp operations (what a direct port runs). Run with
/// `--filter *VeScheduler*`; the Python class itself is timed by ve_scheduler_python.py next to this file.
namespace ScoreSde.Benchmarks

open System
open BenchmarkDotNet.Attributes
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Benchmarks.Setup

[<MemoryDiagnoser>]
type VeSchedulerBenchmarks() =
    let mutable shape: int64[] = [||]
    let mutable g: torch.Generator = null
    let mutable x: torch.Tensor = null
    let mutable out: torch.Tensor = null
    let mutable t: torch.Tensor = null
    let mutable scheduler: ScoreSdeVeScheduler = Unchecked.defaultof<_>
    let mutable gStd: float32 = 0.0f

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
        scheduler <- ScoreSdeVeScheduler()
        scheduler.SetTimesteps(1000)
        scheduler.SetSigmas(1000)
        t <- scheduler.Timesteps.[500L]
        // the naive port's diffusion, read from the tables as diffusers does (index 499)
        let d = scheduler.DiscreteSigmas.data<float32>().ToArray()
        gStd <- MathF.Sqrt(d.[499] * d.[499] - d.[498] * d.[498])

    [<GlobalCleanup>]
    member _.Cleanup() =
        for v in [ x; out; t ] do
            v.Dispose()
        g.Dispose()

    /// The floor: torch.randn of the step's shape from a generator (a fresh tensor, as the step makes).
    [<Benchmark(Baseline = true)>]
    member _.VeNoiseFloor() =
        use n = torch.randn (shape, generator = g)
        ()

    /// ScoreSdeVeScheduler.StepPred: argument checks, the index on the host, a draw and one fused pass.
    [<Benchmark>]
    member _.VeStepPred() =
        let r = scheduler.StepPred(out, t, x, g)
        r.PrevSample.Dispose()
        r.PrevSampleMean.Dispose()

    /// ScoreSdeVeScheduler.StepCorrect: a float32 draw, two per-sample norm passes, one fused pass.
    [<Benchmark>]
    member _.VeStepCorrect() =
        let r = scheduler.StepCorrect(out, x, g)
        r.PrevSample.Dispose()
        r.PrevSampleMean.Dispose()

    /// diffusers' step_pred arithmetic as separate operations (a fresh tensor per operation).
    [<Benchmark>]
    member _.VeNaiveStepPred() =
        use scope = torch.NewDisposeScope()
        let d = torch.full ([| shape.[0]; 1L; 1L; 1L |], Scalar.op_Implicit gStd)
        let drift = torch.zeros_like (x) - d.pow (Scalar.op_Implicit 2.0) * out
        let z = torch.randn (x.shape, dtype = x.dtype, generator = g)
        let mean = x - drift
        let sample = mean + d * z
        ()

    /// diffusers' step_correct arithmetic as separate operations (a fresh tensor per operation).
    [<Benchmark>]
    member _.VeNaiveStepCorrect() =
        use scope = torch.NewDisposeScope()
        let b = shape.[0]
        let z = torch.randn (x.shape, generator = g)
        let gradNorm = torch.linalg.norm(out.reshape (b, -1L), dims = [| -1L |]).mean()
        let noiseNorm = torch.linalg.norm(z.reshape (b, -1L), dims = [| -1L |]).mean()
        let e = (noiseNorm * 0.15 / gradNorm).pow(Scalar.op_Implicit 2.0) * 2.0
        let e = (e * torch.ones (b)).reshape(b, 1L, 1L, 1L)
        let mean = x + e * out
        let sample = mean + (e * 2.0).sqrt() * z
        ()
