namespace ScoreSde.Cli

open System
open System.CommandLine
open TorchSharp
open ScoreSde

/// A sampler configured and ready to run.
type SamplerRun =
    { /// Short name (as on the command line).
      Name: string
      /// What exactly runs, for tables and logs.
      Label: string
      /// Steps the observer will see (for the progress bar); 0 when not known in advance.
      Steps: int
      /// Run from the prior draw xT (not modified); the observer sees every step's state.
      Run: VpSde -> Model -> Noise -> Tensor -> Observer option -> SampleResult }

/// A sampler the command line offers: its options on `sample` and its settings in `demo`.
/// To add a sampler, write one such value and append it to `Samplers.all`.
type SamplerEntry =
    { Name: string
      Summary: string
      /// Options that only this sampler reads (shared ones are in `Samplers.steps` and `Samplers.eps`).
      Options: Option list
      /// Its settings from a parsed `sample` command line.
      FromCommandLine: ParseResult -> SamplerRun
      /// Its settings in `demo`.
      Demo: SamplerRun }

[<RequireQualifiedAccess>]
module Samplers =
    /// Shared by every sampler: the number of steps (each sampler has its own default).
    let steps = Opt.intAtLeastOrNone 1 "--steps" "Sampler steps (default: pc 500; ode with a fixed-step solver 100)"

    /// Shared by every sampler: the time the sampler stops at.
    let eps = Opt.inRange 1e-6 1.0 "--eps" "Time at which sampling stops" (Some 1e-3)

    let private stepsOr (pr: ParseResult) (fallback: int) =
        let v = pr.GetValue(steps)
        if v.HasValue then v.Value else fallback

    // ---- predictor-corrector ----

    let private predictors =
        [ "reverse-diffusion", Predictor.ReverseDiffusion
          "euler-maruyama", Predictor.EulerMaruyama
          "ancestral", Predictor.AncestralSampling
          "none", Predictor.NoPredictor ]

    let private predictor = Opt.choice "--predictor" "PC predictor" (List.map fst predictors) (Some "reverse-diffusion")
    let private corrector = Opt.choice "--corrector" "PC corrector" [ "langevin"; "annealed"; "none" ] (Some "langevin")
    let private snr = Opt.positive "--snr" "Langevin signal-to-noise ratio" (Some 0.16)
    let private correctorSteps = Opt.intAtLeast 1 "--corrector-steps" "Corrector steps per time point" (Some 1)
    let private langevinNorm =
        Opt.choice "--langevin-norm"
            "How Langevin measures |z|/|score|: 'batch' averages over the batch (the paper's choice, right for low-dimensional data); 'sample' uses each sample's own norms"
            [ "batch"; "sample" ] (Some "batch")

    /// The PC sampler with given pieces.
    let pcRun (p: Predictor) (c: Corrector) (stepCount: int) (epsValue: float) : SamplerRun =
        let settings = { Sampler.pcDefaults with Predictor = p; Corrector = c; Steps = stepCount; Eps = epsValue }
        let correctorText =
            match c with
            | Corrector.NoCorrector -> ""
            | c -> " + " + Corrector.name c
        { Name = "pc"
          Label = sprintf "PC: %s%s, %d steps" (Predictor.name p) correctorText stepCount
          Steps = stepCount
          Run = fun sde model noise xT observer ->
                  Sampler.predictorCorrector sde model { settings with Observer = observer } noise xT }

    let private pcFromCommandLine (pr: ParseResult) =
        let p = predictors |> List.find (fun (n, _) -> n = Opt.choiceValue pr predictor) |> snd
        let k = pr.GetValue(correctorSteps)
        let c =
            match Opt.choiceValue pr corrector with
            | "none" -> Corrector.NoCorrector
            | "annealed" -> Corrector.annealedLangevin (pr.GetValue snr) k
            | _ ->
                let norm = if Opt.choiceValue pr langevinNorm = "sample" then LangevinNorm.PerSample else LangevinNorm.BatchMean
                Corrector.Langevin { Snr = pr.GetValue snr; Steps = k; Norm = norm }
        pcRun p c (stepsOr pr 500) (pr.GetValue eps)

    /// Reverse diffusion + Langevin with batch-averaged norms (the paper's PC sampler).
    let pc =
        { Name = "pc"
          Summary = "predictor-corrector sampler of the reverse-time SDE (Song et al. 2021, Alg. 1)"
          Options = [ predictor; corrector; snr; correctorSteps; langevinNorm ]
          FromCommandLine = pcFromCommandLine
          Demo =
            pcRun Predictor.ReverseDiffusion (Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean }) 250 1e-3 }

    // ---- probability-flow ODE: adaptive Dormand-Prince or a fixed-step solver ----

    let private solvers = [ "rk4", OdeSolver.Rk4; "heun", OdeSolver.Heun; "euler", OdeSolver.Euler ]
    let private solver =
        Opt.choice "--solver" "ODE solver: adaptive Dormand-Prince 5(4), or a fixed-step solver on --steps uniform steps"
            ("dopri5" :: List.map fst solvers) (Some "dopri5")
    let private rtol = Opt.positive "--rtol" "dopri5: relative tolerance" (Some 1e-5)
    let private atol = Opt.positive "--atol" "dopri5: absolute tolerance" (Some 1e-5)

    /// The fixed-step probability-flow sampler.
    let odeRun (s: OdeSolver) (stepCount: int) (epsValue: float) : SamplerRun =
        let settings = { Sampler.odeDefaults with Solver = s; Steps = stepCount; Eps = epsValue }
        { Name = "ode"
          Label = sprintf "ODE: %s, %d steps" (OdeSolver.name s) stepCount
          Steps = stepCount
          Run = fun sde model _ xT observer -> Sampler.probabilityFlow sde model { settings with Observer = observer } xT }

    /// The adaptive probability-flow sampler (Dormand-Prince 5(4), one step size for the batch, as
    /// the paper's code and `ProbabilityFlow.defaults`).
    let adaptiveOdeRun (r: float) (a: float) (epsValue: float) : SamplerRun =
        let adaptive =
            match ProbabilityFlow.defaults.Method with
            | OdeMethod.Dopri5 d -> { d with Rtol = r; Atol = a }
            | _ -> { AdaptiveOde.defaults with Rtol = r; Atol = a; Control = StepControl.BatchGlobal }
        { Name = "ode"
          Label = sprintf "ODE: Dopri5, rtol %g, atol %g" r a
          Steps = 0
          Run = fun sde model _ xT observer ->
                  // the adaptive observer sees one time per sample; with batch-global control they agree
                  let watch =
                      observer |> Option.map (fun f -> fun (i: int) (t: Tensor) (x: Tensor) ->
                          use t0 = t.[0L]
                          f i (t0.to_type(torch.float64).item<float>()) x)
                  let settings = { ProbabilityFlow.defaults with Method = OdeMethod.Dopri5 { adaptive with Observer = watch }; Eps = epsValue }
                  ProbabilityFlow.sample sde model settings xT }

    let ode =
        { Name = "ode"
          Summary = "deterministic sampler: the probability-flow ODE integrated from t = 1 to eps"
          Options = [ solver; rtol; atol ]
          FromCommandLine = fun pr ->
            match Opt.choiceValue pr solver with
            | "dopri5" ->
                if pr.GetValue(steps).HasValue then
                    raise (ArgumentException(
                            "--steps applies to the fixed-step solvers (--solver rk4|heun|euler); dopri5 chooses its own steps from --rtol and --atol.", "--steps"))
                adaptiveOdeRun (pr.GetValue rtol) (pr.GetValue atol) (pr.GetValue eps)
            | name -> odeRun (solvers |> List.find (fun (n, _) -> n = name) |> snd) (stepsOr pr 100) (pr.GetValue eps)
          Demo = adaptiveOdeRun 1e-5 1e-5 1e-3 }

    /// Every sampler the command line offers, in the order `demo` runs them.
    let all = [ pc; ode ]

    /// Their names.
    let names = all |> List.map (fun e -> e.Name)

    /// The `--sampler` option.
    let choice = Opt.choice "--sampler" "Sampler" names (Some "pc")

    /// The entry named on the command line.
    let selected (pr: ParseResult) = all |> List.find (fun e -> e.Name = Opt.choiceValue pr choice)
