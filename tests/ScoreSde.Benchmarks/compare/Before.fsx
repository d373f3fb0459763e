// The cases of run.sh through the API before the SDE value and the single entry point (commit 7470e88:
// Sampler.predictorCorrector / probabilityFlow, ProbabilityFlow.sample / encode, DpmSolver.sample,
// Likelihood.compute with its own Eps). After.fsx runs the same cases through Sampler.sample.
// Run by run.sh with that build's assemblies on the command line (-r:.../ScoreSde.dll ...).

#load "Timing.fsx"

open TorchSharp
open ScoreSde
open Timing

Native.ensureLoaded ()
let sde = VpSde.standard
let model = Model.score (fun x _ -> x.neg ())
let g = new torch.Generator(0UL, torch.CPU)
let noise = Noise.fromGenerator g
let small = torch.randn ([| 64L; 2L |], generator = g)
let large = torch.randn ([| 4L; 3L; 64L; 64L |], generator = g)
let steps = 100

let pc (p: Predictor) (c: Corrector) = { Sampler.pcDefaults with Predictor = p; Corrector = c; Steps = steps }

let langevin = Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.PerSample }
let ode (solver: OdeSolver) = { Sampler.odeDefaults with Solver = solver; Steps = steps }

let heldDopri5 (eps: float) =
    let h = (1.0 - eps) / float steps
    OdeMethod.Dopri5
        { AdaptiveOde.defaults with
            Control = StepControl.PerSample
            InitialStep = Some h
            MaxStep = Some h
            MaxSteps = steps + 10 }

let dpmPlusPlus = { DpmSolver.defaults with Algorithm = DpmAlgorithm.DpmSolverPlusPlus; Steps = steps }
let dpmSingle = { DpmSolver.defaults with Method = DpmMethod.SingleStep; Steps = 21 }

let sampled (f: unit -> SampleResult) () = (f ()).Samples.Dispose()

let samplerCases (shape: string) (x: torch.Tensor) =
    [ { Name = "model alone, " + shape; Steps = 1; Run = fun () -> (model.Forward x null).Dispose() }
      { Name = "PC Euler-Maruyama, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.predictorCorrector sde model (pc Predictor.EulerMaruyama Corrector.NoCorrector) noise x) }
      { Name = "PC reverse diffusion + Langevin, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.predictorCorrector sde model (pc Predictor.ReverseDiffusion langevin) noise x) }
      { Name = "flow Euler, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.probabilityFlow sde model (ode OdeSolver.Euler) x) }
      { Name = "flow Heun, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.probabilityFlow sde model (ode OdeSolver.Heun) x) }
      { Name = "flow RK4, " + shape
        Steps = steps
        Run = sampled (fun () -> Sampler.probabilityFlow sde model (ode OdeSolver.Rk4) x) }
      { Name = "flow Dopri5 held to 100 steps, " + shape
        Steps = steps
        Run = sampled (fun () -> ProbabilityFlow.sample sde model { ProbabilityFlow.defaults with Method = heldDopri5 1e-3 } x) }
      { Name = "DPM-Solver++ 3M, 100 steps, " + shape
        Steps = steps
        Run = sampled (fun () -> DpmSolver.sample sde model dpmPlusPlus x) }
      { Name = "DPM-Solver-3M (defaults), 20 steps, " + shape
        Steps = 20
        Run = sampled (fun () -> DpmSolver.sample sde model DpmSolver.defaults x) }
      { Name = "DPM-Solver-3 singlestep, 21 evaluations, " + shape
        Steps = 21
        Run = sampled (fun () -> DpmSolver.sample sde model dpmSingle x) }
      { Name = "encode, RK4, " + shape
        Steps = steps
        Run =
          fun () -> (ProbabilityFlow.encode sde model (OdeMethod.FixedStep(OdeSolver.Rk4, TimeGrid.Uniform, steps)) 1e-3 x).Latent.Dispose() } ]

let likelihoodExact = { Likelihood.defaults with Method = heldDopri5 1e-5 }

let likelihoodHutchinson =
    { Likelihood.defaults with
        Method = OdeMethod.FixedStep(OdeSolver.Rk4, TimeGrid.Uniform, 20)
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

run "before" cases
