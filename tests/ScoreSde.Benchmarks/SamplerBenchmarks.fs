/// Whole sampling runs on a cheap analytic model, with the model and the step kernels timed alone in
/// the same run so that Report can subtract the model's share.
namespace ScoreSde.Benchmarks

open BenchmarkDotNet.Attributes
open TorchSharp
open ScoreSde
open ScoreSde.Benchmarks.Setup

/// The samplers measured: name, settings maker, model evaluations per step.
module SamplerCases =
    let sde = Sde.standardVp

    /// Data N(0, I): under the VP-SDE every marginal p_t is N(0, I) (alpha_t^2 + sigma_t^2 = 1), so the
    /// score is -x at every t. One tensor operation that allocates its output, as a network does.
    let model = Model.score (fun x _ -> x.neg ())

    /// Steps per benchmarked run.
    let steps = 100

    /// The samplers through the library's entry point, `steps` uniform steps (logSNR for DPM-Solver).
    let pc (p: Predictor) (c: Corrector) (steps: int) =
        { Sampling.pc with
            Method = Method.PredictorCorrector(p, c)
            Schedule = Schedule.uniform steps 1e-3 }

    let pcEm steps = pc Predictor.EulerMaruyama Corrector.NoCorrector steps
    // per-sample norms, as the figures in docs/performance.md were measured (the batch mean, now the
    // default, runs the same kernels and averages the step sizes on the host)
    let pcRdLangevin steps =
        pc Predictor.ReverseDiffusion (Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.PerSample }) steps

    let ode (solver: OdeSolver) (steps: int) =
        { Sampling.flow with
            Method = Method.ProbabilityFlow(OdeMethod.FixedStep solver)
            Schedule = Schedule.uniform steps 1e-3 }

    /// DPM-Solver++ (multistep, order 3, logSNR grid).
    let dpm (steps: int) =
        { Sampling.dpmSolver with
            Method = Method.DpmSolver { DpmSolver.defaults with Algorithm = DpmAlgorithm.DpmSolverPlusPlus; Order = 3 }
            Schedule = { Sampling.dpmSolver.Schedule with Steps = steps } }

    /// Adaptive Dormand-Prince 5(4) on the probability-flow ODE, per-sample step control, held to
    /// `steps` steps by its initial and largest step size (the analytic model's flow field is zero, so
    /// every step is accepted at the largest size): 6 evaluations per step plus 1 at the start (float32
    /// time rounding can add a last short step).
    let dopri5 (steps: int) =
        let h = (1.0 - 1e-3) / float steps
        { Sampling.flow with
            Method =
                Method.ProbabilityFlow(
                    OdeMethod.Dopri5
                        { AdaptiveOde.defaults with
                            Control = StepControl.PerSample
                            InitialStep = Some h
                            MaxStep = Some h
                            MaxSteps = steps + 10 }
                ) }

    /// Noise for the deterministic samplers (not drawn from).
    let unused = Noise.fromSeed 0L torch.CPU

[<MemoryDiagnoser>]
type SamplerBenchmarks() =
    let mutable g: torch.Generator = null
    let mutable noise: Noise = Unchecked.defaultof<_>
    let mutable fastNoise: Noise = Unchecked.defaultof<_>
    let mutable xT: torch.Tensor = null
    let mutable state: torch.Tensor = null
    let mutable z: torch.Tensor = null
    let mutable stage: torch.Tensor = null
    let mutable acc: torch.Tensor = null
    let mutable score: torch.Tensor = null
    let sde = SamplerCases.sde
    // A representative interval of the 100-step uniform grid.
    let t0, s0 = 0.5, 0.5 - (1.0 - 1e-3) / float SamplerCases.steps

    /// Tensor shape, float32.
    [<Params("4x3x64x64")>]
    member val Shape = "" with get, set

    /// libtorch intra-op threads.
    [<ParamsSource("ThreadCounts")>]
    member val Threads = 1 with get, set

    member _.ThreadCounts = threadCounts

    [<GlobalSetup>]
    member this.Setup() =
        setThreads this.Threads
        g <- new torch.Generator(0UL, torch.CPU)
        noise <- Noise.fromGenerator g
        fastNoise <- Noise.fast 0L
        xT <- torch.randn (parseShape this.Shape, generator = g)
        state <- xT.clone ()
        z <- torch.empty_like (xT)
        z.normal_ (0.0, 1.0, g) |> ignore
        stage <- torch.empty_like (xT)
        acc <- torch.empty_like (xT)
        score <- torch.randn (parseShape this.Shape, generator = g)

    [<GlobalCleanup>]
    member _.Cleanup() =
        for v in [ xT; state; z; stage; acc; score ] do
            v.Dispose()
        g.Dispose()

    /// One evaluation of the analytic model (its share of every sampler step).
    [<Benchmark>]
    member _.ModelAlone() =
        use o = SamplerCases.model.Forward xT null
        ()

    /// The Euler-Maruyama kernel alone, as the sampler runs it: z <- noise, x <- a x + b score + c z
    /// (score = -x folded into b).
    [<Benchmark>]
    member _.EmKernel() =
        let c = Predictor.coefficients sde Predictor.EulerMaruyama t0 s0
        Kernel.axpbyNoise state c.A state -c.B z c.NoiseStd noise

    /// The Euler-Maruyama kernel with the optional Noise.fast source.
    [<Benchmark>]
    member _.EmKernelFastNoise() =
        let c = Predictor.coefficients sde Predictor.EulerMaruyama t0 s0
        Kernel.axpbyNoise state c.A state -c.B z c.NoiseStd fastNoise

    /// Reverse diffusion plus one Langevin step, kernels alone: the predictor with score = -x folded
    /// into its coefficients, the corrector on a fixed score buffer (a model's output is a tensor of its
    /// own, which the corrector's one-pass path needs).
    [<Benchmark>]
    member _.RdLangevinKernel() =
        let c = Predictor.coefficients sde Predictor.ReverseDiffusion t0 s0
        Corrector.langevinUpdate
            state
            score
            1.0
            z
            noise
            (Corrector.stepAlpha sde t0 s0)
            (Corrector.StepSize.FromNorms(LangevinNorm.PerSample, 0.16))
            true
        Kernel.axpbyNoise state c.A state -c.B z c.NoiseStd noise

    /// One fixed probability-flow step's arithmetic alone, in place, with the model output a fixed
    /// buffer (the noise buffer) instead of a model call; h > 0 keeps the state bounded over many calls
    /// (the cost does not depend on the direction).
    member private _.OdeKernel(solver: OdeSolver) =
        let h = (1.0 - 1e-3) / float SamplerCases.steps
        ProbabilityFlow.stepInPlace sde ModelOutput.Score solver state stage acc t0 (t0 + h) (fun _ _ update -> update z)

    /// The Euler probability-flow kernel alone.
    [<Benchmark>]
    member this.OdeEulerKernel() = this.OdeKernel OdeSolver.Euler

    /// The RK4 probability-flow kernel alone (four stage updates).
    [<Benchmark>]
    member this.OdeRk4Kernel() = this.OdeKernel OdeSolver.Rk4

    /// PC sampler, Euler-Maruyama, no corrector, 100 steps.
    [<Benchmark>]
    member _.PcEulerMaruyama() =
        let r = Sampler.sample sde SamplerCases.model (SamplerCases.pcEm SamplerCases.steps) noise xT
        r.Samples.Dispose()

    /// PC sampler, Euler-Maruyama, no corrector, 100 steps, with the optional Noise.fast source.
    [<Benchmark>]
    member _.PcEulerMaruyamaFastNoise() =
        let r = Sampler.sample sde SamplerCases.model (SamplerCases.pcEm SamplerCases.steps) fastNoise xT
        r.Samples.Dispose()

    /// PC sampler, reverse diffusion + Langevin (per-sample norms), 100 steps.
    [<Benchmark>]
    member _.PcReverseDiffusionLangevin() =
        let r = Sampler.sample sde SamplerCases.model (SamplerCases.pcRdLangevin SamplerCases.steps) noise xT
        r.Samples.Dispose()

    /// Probability-flow ODE, forward Euler, 100 steps.
    [<Benchmark>]
    member _.OdeEuler() =
        let r = Sampler.sample sde SamplerCases.model (SamplerCases.ode OdeSolver.Euler SamplerCases.steps) SamplerCases.unused xT
        r.Samples.Dispose()

    /// DPM-Solver++ (multistep, order 3, logSNR grid), 100 evaluations.
    [<Benchmark>]
    member _.DpmSolverPlusPlus() =
        let r = Sampler.sample sde SamplerCases.model (SamplerCases.dpm SamplerCases.steps) SamplerCases.unused xT
        r.Samples.Dispose()

    /// Probability-flow ODE, adaptive Dormand-Prince 5(4) held to 100 steps.
    [<Benchmark>]
    member _.OdeDopri5() =
        let r = Sampler.sample sde SamplerCases.model (SamplerCases.dopri5 SamplerCases.steps) SamplerCases.unused xT
        r.Samples.Dispose()

    /// Probability-flow ODE, RK4, 100 steps.
    [<Benchmark>]
    member _.OdeRk4() =
        let r = Sampler.sample sde SamplerCases.model (SamplerCases.ode OdeSolver.Rk4 SamplerCases.steps) SamplerCases.unused xT
        r.Samples.Dispose()
