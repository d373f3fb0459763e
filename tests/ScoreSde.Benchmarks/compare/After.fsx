// The cases of run.sh through the single entry point (Sampler.sample with a Sampling record,
// Sampler.encode, Likelihood.compute with a Schedule): the same cases, settings and names as Before.fsx.
// Run by run.sh with that build's assemblies on the command line (-r:.../ScoreSde.dll ...).

#load "Timing.fsx"

open TorchSharp
open ScoreSde
open Timing

Native.ensureLoaded ()
let sde = Sde.standardVp
let model = Model.score (fun x _ -> x.neg ())
let g = new torch.Generator(0UL, torch.CPU)
let noise = Noise.fromGenerator g
let small = torch.randn ([| 64L; 2L |], generator = g)
let large = torch.randn ([| 4L; 3L; 64L; 64L |], generator = g)
let steps = 100

let pc (p: Predictor) (c: Corrector) =
    { Sampling.pc with
        Method = Method.PredictorCorrector(p, c)
        Schedule = Schedule.uniform steps 1e-3 }

let langevin = Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.PerSample }

let ode (solver: OdeSolver) =
    { Sampling.flow with
        Method = Method.ProbabilityFlow(OdeMethod.FixedStep solver)
        Schedule = Schedule.uniform steps 1e-3 }

let heldDopri5 (eps: float) =
    let h = (1.0 - eps) / float steps
    OdeMethod.Dopri5
        { AdaptiveOde.defaults with
            Control = StepControl.PerSample
            InitialStep = Some h
            MaxStep = Some h
            MaxSteps = steps + 10 }

/// CHECK_FINITE=false times the samplers without issue 11's non-finite check (on by default since),
/// which the before side does not have.
let checkFinite = System.Environment.GetEnvironmentVariable "CHECK_FINITE" <> "false"

let dpm (settings: DpmSolverSettings) (n: int) =
    { Sampling.dpmSolver with
        CheckFinite = checkFinite
        Method = Method.DpmSolver settings
        Schedule = { Sampling.dpmSolver.Schedule with Steps = n } }

let dpmPlusPlus = dpm { DpmSolver.defaults with Algorithm = DpmAlgorithm.DpmSolverPlusPlus } steps
let dpmSingle = dpm { DpmSolver.defaults with Method = DpmMethod.SingleStep } 21

let sampled (f: unit -> SampleResult) () = (f ()).Samples.Dispose()
let unused = Noise.fromSeed 0L torch.CPU

let samplerCases (shape: string) (x: torch.Tensor) =
    [ { Name = "model alone, " + shape; Steps = 1; Run = fun () -> (model.Forward x null).Dispose() }
      { Name = "PC Euler-Maruyama, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.sample sde model (pc Predictor.EulerMaruyama Corrector.NoCorrector) noise x) }
      { Name = "PC reverse diffusion + Langevin, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.sample sde model (pc Predictor.ReverseDiffusion langevin) noise x) }
      { Name = "flow Euler, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.sample sde model (ode OdeSolver.Euler) unused x) }
      { Name = "flow Heun, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.sample sde model (ode OdeSolver.Heun) unused x) }
      { Name = "flow RK4, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.sample sde model (ode OdeSolver.Rk4) unused x) }
      { Name = "flow Dopri5 held to 100 steps, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.sample sde model { Sampling.flow with Method = Method.ProbabilityFlow(heldDopri5 1e-3) } unused x) }
      { Name = "DPM-Solver++ 3M, 100 steps, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.sample sde model dpmPlusPlus unused x) }
      { Name = "DPM-Solver-3M (defaults), 20 steps, " + shape
        Steps = 20
        Run = sampled (fun () -> Sampler.sample sde model { Sampling.dpmSolver with CheckFinite = checkFinite } unused x) }
      { Name = "DPM-Solver-3 singlestep, 21 evaluations, " + shape
        Steps = 21
        Run = sampled (fun () -> Sampler.sample sde model dpmSingle unused x) }
      { Name = "encode, RK4, " + shape
        Steps = steps
        Run = fun () -> (Sampler.encode sde model (OdeMethod.FixedStep OdeSolver.Rk4) (Schedule.uniform steps 1e-3) x).Latent.Dispose() } ]

let likelihoodExact = { Likelihood.defaults with Method = heldDopri5 1e-5 }

let likelihoodHutchinson =
    { Likelihood.defaults with
        Method = OdeMethod.FixedStep OdeSolver.Rk4
        Schedule = Schedule.uniform 20 1e-5
        Divergence = Divergence.Hutchinson(Probe.Rademacher, 1) }

let cases =
    samplerCases "64x2" small
    @ samplerCases "4x3x64x64" large
    @ commonCases
        g
        small
        large
        (fun () -> Likelihood.compute sde model likelihoodExact noise small :> System.IDisposable)
        (fun () -> Likelihood.compute sde model likelihoodHutchinson noise large :> System.IDisposable)
        (Likelihood.driftAndDivergence sde model)

run "after" cases
