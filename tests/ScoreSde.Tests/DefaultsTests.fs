/// One default per setting: the C# options and the command line start from the F# library's values
/// (`Sampling.pc`, `Sampling.flow`, `Sampling.dpmSolver`, `DpmSolver.defaults`).
module ScoreSde.Tests.DefaultsTests

open Expecto
open ScoreSde

[<Tests>]
let tests =
    testList
        "Defaults"
        [ test "the C# PcOptions defaults are Sampling.pc's" {
              let o = ScoreSde.CSharp.PcOptions()
              let steps, p, c =
                  match Sampling.pc.Method with
                  | Method.PredictorCorrector(p, c) -> Sampling.pc.Schedule.Steps, p, c
                  | m -> failtestf "Sampling.pc is %A" m
              Expect.equal o.Steps steps "steps"
              Expect.equal o.Eps Sampling.pc.Schedule.Eps "eps"
              Expect.isTrue (p.IsReverseDiffusion) "predictor"
              Expect.equal o.Predictor ScoreSde.CSharp.Predictor.ReverseDiffusion "C# predictor"
              match c with
              | Corrector.Langevin s ->
                  Expect.equal o.Corrector ScoreSde.CSharp.Corrector.Langevin "corrector"
                  Expect.equal o.Snr s.Snr "snr"
                  Expect.equal o.CorrectorSteps s.Steps "corrector steps"
                  Expect.equal (s.Norm = LangevinNorm.BatchMean) (o.LangevinNorm = ScoreSde.CSharp.LangevinNorm.BatchMean) "norm"
              | other -> failtestf "Sampling.pc's corrector is %A" other
              Expect.equal o.Denoise (Sampling.pc.Finish = Finish.LastMean) "the last step's mean"
          }

          test "the C# OdeOptions and DpmSolverOptions defaults are Sampling.flow's and Sampling.dpmSolver's" {
              let o = ScoreSde.CSharp.OdeOptions()
              Expect.equal o.Steps Sampling.flow.Schedule.Steps "fixed-step solver's steps"
              Expect.equal o.Eps Sampling.flow.Schedule.Eps "eps"
              match Sampling.flow.Method with
              | Method.ProbabilityFlow(OdeMethod.Dopri5 s) ->
                  Expect.equal o.Solver ScoreSde.CSharp.OdeSolver.Dopri5 "solver"
                  Expect.equal o.Rtol s.Rtol "rtol"
                  Expect.equal o.Atol s.Atol "atol"
                  Expect.equal o.MaxSteps s.MaxSteps "max steps"
                  Expect.equal o.PerSampleStepControl (s.Control = StepControl.PerSample) "step control"
              | m -> failtestf "Sampling.flow is %A" m
              let d = ScoreSde.CSharp.DpmSolverOptions()
              Expect.equal d.Steps Sampling.dpmSolver.Schedule.Steps "DPM-Solver evaluations"
              Expect.equal d.Eps Sampling.dpmSolver.Schedule.Eps "DPM-Solver eps"
              Expect.equal d.Order DpmSolver.defaults.Order "order"
              Expect.equal d.LowerOrderFinalBelowSteps 10 "lower-order rule's threshold"
              Expect.equal DpmSolver.defaults.LowerOrderFinal (LowerOrderFinal.BelowSteps 10) "the library's rule"
          } ]
