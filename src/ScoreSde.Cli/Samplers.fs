namespace ScoreSde.Cli

open System
open System.CommandLine
open TorchSharp
open ScoreSde

/// A sampler configured and ready to run through the library's entry point (`Sampler.sample`).
type SamplerRun =
    {
        /// Short name (as on the command line).
        Name: string
        /// What exactly runs, for tables and logs.
        Label: string
        /// Steps the observer will see (for the progress bar); 0 when not known in advance.
        Steps: int
        /// The run's method, schedule and finish.
        Sampling: Sampling
    }

/// A sampler the command line offers: its options on `sample` and its settings in `demo`.
/// To add a sampler, write one such value and append it to `Samplers.all`.
type SamplerEntry =
    {
        Name: string
        Summary: string
        /// Options that only this sampler reads (shared ones are in `Samplers.steps` and `Samplers.eps`).
        Options: Option list
        /// Its settings from a parsed `sample` command line.
        FromCommandLine: ParseResult -> SamplerRun
        /// Its settings in `demo`.
        Demo: SamplerRun
    }

[<RequireQualifiedAccess>]
module Samplers =
    /// Shared by every sampler: the number of steps (each sampler has its own default).
    let steps =
        Opt.intAtLeastOrNone
            1
            "--steps"
            "Sampler steps (default: pc 1000, as the paper; ode with a fixed-step solver 100; dpm 20 evaluations)"

    /// Shared by every sampler: the time the sampler stops at.
    let eps = Opt.inRange 1e-6 1.0 "--eps" "Time at which sampling stops" (Some 1e-3)

    /// Shared by the adaptive solvers: tolerances (each sampler has its own defaults).
    let rtol = Opt.positiveOrNone "--rtol" "Relative tolerance of an adaptive solver (default: ode 1e-5; dpm adaptive 0.05)"
    let atol = Opt.positiveOrNone "--atol" "Absolute tolerance of an adaptive solver (default: ode 1e-5; dpm adaptive 0.0078)"

    let private valueOr (pr: ParseResult) (o: Option<Nullable<'T>>) (fallback: 'T) =
        let v = pr.GetValue(o)
        if v.HasValue then v.Value else fallback

    let private stepsOr (pr: ParseResult) (fallback: int) = valueOr pr steps fallback

    /// Reject --steps for a method that chooses its own steps.
    let private noSteps (pr: ParseResult) (what: string) =
        if pr.GetValue(steps).HasValue then
            raise (
                ArgumentException(sprintf "--steps does not apply to %s: it chooses its own steps from --rtol and --atol." what, "--steps")
            )

    /// Reject --rtol/--atol for a fixed-step method.
    let private noTolerances (pr: ParseResult) (what: string) =
        if pr.GetValue(rtol).HasValue || pr.GetValue(atol).HasValue then
            raise (ArgumentException(sprintf "--rtol and --atol apply to adaptive solvers, not to %s." what, "--rtol"))

    // ---- predictor-corrector ----

    let private predictors =
        [ "reverse-diffusion", Predictor.ReverseDiffusion
          "euler-maruyama", Predictor.EulerMaruyama
          "ancestral", Predictor.AncestralSampling
          "none", Predictor.NoPredictor ]

    let private predictor = Opt.choice "--predictor" "PC predictor" (List.map fst predictors) (Some "reverse-diffusion")
    let private corrector = Opt.choice "--corrector" "PC corrector" [ "langevin"; "annealed"; "none" ] (Some "langevin")
    /// The library's PC sampler (`Sampling.pc`): its predictor and corrector are the defaults here.
    let private pcPredictor, pcCorrector =
        match Sampling.pc.Method with
        | Method.PredictorCorrector(p, c) -> p, c
        | _ -> Predictor.ReverseDiffusion, Corrector.langevin 0.16 1
    let private langevinDefaults =
        match pcCorrector with
        | Corrector.Langevin l -> l
        | _ -> { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean }
    let private snr = Opt.positive "--snr" "Langevin signal-to-noise ratio" (Some langevinDefaults.Snr)
    let private correctorSteps =
        Opt.intAtLeast 1 "--corrector-steps" "Corrector steps per time point" (Some langevinDefaults.Steps)
    let private norms = [ "batch", LangevinNorm.BatchMean; "sample", LangevinNorm.PerSample ]
    let private langevinNorm =
        Opt.choice
            "--langevin-norm"
            "How Langevin measures |z|/|score|: 'batch' averages over the batch (the library's default and the paper's choice); 'sample' uses each sample's own norms, which biases low-dimensional data (docs/correctors.md); for batch-independent sampling use --corrector annealed"
            (List.map fst norms)
            (Some(norms |> List.find (fun (_, n) -> n = langevinDefaults.Norm) |> fst))

    /// The PC sampler with given pieces.
    let pcRun (p: Predictor) (c: Corrector) (stepCount: int) (epsValue: float) : SamplerRun =
        let correctorText =
            match c with
            | Corrector.NoCorrector -> ""
            | c -> " + " + Corrector.name c
        { Name = "pc"
          Label = sprintf "PC: %s%s, %d steps" (Predictor.name p) correctorText stepCount
          Steps = stepCount
          Sampling =
            { Sampling.pc with
                Method = Method.PredictorCorrector(p, c)
                Schedule = Schedule.uniform stepCount epsValue } }

    let private pcFromCommandLine (pr: ParseResult) =
        let p = predictors |> List.find (fun (n, _) -> n = Opt.choiceValue pr predictor) |> snd
        let k = pr.GetValue(correctorSteps)
        let c =
            match Opt.choiceValue pr corrector with
            | "none" -> Corrector.NoCorrector
            | "annealed" -> Corrector.annealedLangevin (pr.GetValue snr) k
            | _ ->
                let norm = norms |> List.find (fun (n, _) -> n = Opt.choiceValue pr langevinNorm) |> snd
                Corrector.Langevin { Snr = pr.GetValue snr; Steps = k; Norm = norm }
        noTolerances pr "the PC sampler"
        pcRun p c (stepsOr pr Sampling.pc.Schedule.Steps) (pr.GetValue eps)

    /// Reverse diffusion + Langevin with batch-averaged norms (the paper's PC sampler).
    let pc =
        { Name = "pc"
          Summary = "predictor-corrector sampler of the reverse-time SDE (Song et al. 2021, Alg. 1)"
          Options = [ predictor; corrector; snr; correctorSteps; langevinNorm ]
          FromCommandLine = pcFromCommandLine
          Demo = pcRun pcPredictor pcCorrector 250 1e-3 }

    // ---- probability-flow ODE: adaptive Dormand-Prince or a fixed-step solver ----

    let private solvers = [ "rk4", OdeSolver.Rk4; "heun", OdeSolver.Heun; "euler", OdeSolver.Euler ]
    let private solver =
        Opt.choice
            "--solver"
            "ODE solver: adaptive Dormand-Prince 5(4), or a fixed-step solver on --steps uniform steps"
            ("dopri5" :: List.map fst solvers)
            (Some "dopri5")

    /// The fixed-step probability-flow sampler.
    let odeRun (s: OdeSolver) (stepCount: int) (epsValue: float) : SamplerRun =
        { Name = "ode"
          Label = sprintf "ODE: %s, %d steps" (OdeSolver.name s) stepCount
          Steps = stepCount
          Sampling =
            { Sampling.flow with
                Method = Method.ProbabilityFlow(OdeMethod.FixedStep s)
                Schedule = Schedule.uniform stepCount epsValue } }

    /// The adaptive probability-flow sampler (Dormand-Prince 5(4), one step size for the batch, as
    /// the paper's code and `Sampling.flow`).
    let adaptiveOdeRun (r: float) (a: float) (epsValue: float) : SamplerRun =
        let adaptive =
            match Sampling.flow.Method with
            | Method.ProbabilityFlow(OdeMethod.Dopri5 d) -> { d with Rtol = r; Atol = a }
            | _ -> { AdaptiveOde.defaults with Rtol = r; Atol = a; Control = StepControl.BatchGlobal }
        { Name = "ode"
          Label = sprintf "ODE: Dopri5, rtol %g, atol %g" r a
          Steps = 0
          Sampling =
            { Sampling.flow with
                Method = Method.ProbabilityFlow(OdeMethod.Dopri5 adaptive)
                Schedule = { Sampling.flow.Schedule with Eps = epsValue } } }

    let ode =
        { Name = "ode"
          Summary = "deterministic sampler: the probability-flow ODE integrated from t = 1 to eps"
          Options = [ solver ]
          FromCommandLine =
            fun pr ->
                match Opt.choiceValue pr solver with
                | "dopri5" ->
                    noSteps pr "--solver dopri5 (use --solver rk4|heun|euler for a fixed number of steps)"
                    adaptiveOdeRun (valueOr pr rtol 1e-5) (valueOr pr atol 1e-5) (pr.GetValue eps)
                | name ->
                    noTolerances pr (sprintf "--solver %s" name)
                    odeRun (solvers |> List.find (fun (n, _) -> n = name) |> snd) (stepsOr pr 100) (pr.GetValue eps)
          Demo = adaptiveOdeRun 1e-5 1e-5 1e-3 }

    // ---- DPM-Solver ----

    let private algorithms = [ "dpm-solver", DpmAlgorithm.DpmSolver; "dpm-solver++", DpmAlgorithm.DpmSolverPlusPlus ]
    let private nameOf (choices: (string * 'T) list) (value: 'T) = choices |> List.find (fun (_, v) -> v = value) |> fst
    let private algorithm =
        Opt.choice
            "--algorithm"
            "DPM: noise-prediction DPM-Solver (the default, best for unguided models) or data-prediction DPM-Solver++ (guided sampling)"
            (List.map fst algorithms)
            (Some(nameOf algorithms DpmSolver.defaults.Algorithm))
    let private order = Opt.choice "--order" "DPM: solver order" [ "1"; "2"; "3" ] (Some(string DpmSolver.defaults.Order))
    let private dpmMethod =
        Opt.choice
            "--method"
            "DPM: multistep, single-step, or adaptive step size (orders 2 and 3)"
            [ "multistep"; "singlestep"; "adaptive" ]
            (Some "multistep")
    let private lowerOrderRules =
        [ "below10", LowerOrderFinal.BelowSteps 10
          "below15", LowerOrderFinal.BelowSteps 15
          "always", LowerOrderFinal.Always
          "never", LowerOrderFinal.Never ]
    let private lowerOrderFinal =
        Opt.choice
            "--lower-order-final"
            "DPM multistep: lower the final steps' orders below 10 steps (dpm_solver_pytorch.py), below 15 (diffusers), always or never"
            (List.map fst lowerOrderRules)
            (Some(nameOf lowerOrderRules DpmSolver.defaults.LowerOrderFinal))
    let private thirdOrders = [ "published", DpmThirdOrder.Published; "taylor-exact", DpmThirdOrder.TaylorExact ]
    let private thirdOrder =
        Opt.choice
            "--third-order"
            "DPM multistep order 3: the published update or the Taylor-exact one (doubled second difference)"
            (List.map fst thirdOrders)
            (Some(nameOf thirdOrders DpmSolver.defaults.ThirdOrder))

    let private thresholding =
        Opt.choice
            "--thresholding"
            "DPM-Solver++: correct the data prediction, 'static' (clamp to +-threshold-max) or 'dynamic' (Imagen's: per sample, the threshold-quantile of |x0|, at least threshold-max)"
            [ "none"; "static"; "dynamic" ]
            (Some "none")
    let private thresholdQuantile =
        Opt.inRange 1e-6 1.000001 "--threshold-quantile" "DPM-Solver++ dynamic thresholding: the quantile of |x0|" (Some 0.995)
    let private thresholdMax =
        Opt.positive "--threshold-max" "DPM-Solver++ thresholding: the bound (pixels in [-1, 1]: 1)" (Some 1.0)

    /// DPM-Solver with the given settings (the logSNR grid of the papers for the fixed-step methods).
    let dpmRunWith (settings: DpmSolverSettings) (stepCount: int) (epsValue: float) : SamplerRun =
        let name = if settings.Algorithm = DpmAlgorithm.DpmSolver then "DPM-Solver" else "DPM-Solver++"
        let k = settings.Order
        let label, progressSteps =
            match settings.Method with
            | DpmMethod.MultiStep -> sprintf "%s-%dM, %d steps" name k stepCount, stepCount
            | DpmMethod.SingleStep -> sprintf "%s-%dS, %d evaluations" name k stepCount, 0
            | DpmMethod.Adaptive a -> sprintf "%s-%d adaptive, rtol %g, atol %g" name k a.Rtol a.Atol, 0
        let label =
            match settings.Thresholding with
            | Thresholding.NoThresholding -> label
            | Thresholding.Static b -> sprintf "%s, static thresholding at %g" label b
            | Thresholding.Dynamic(q, m) -> sprintf "%s, dynamic thresholding (quantile %g, max %g)" label q m
        { Name = "dpm"
          Label = label
          Steps = progressSteps
          Sampling =
            { Sampling.dpmSolver with
                Method = Method.DpmSolver settings
                Schedule = { Sampling.dpmSolver.Schedule with Steps = stepCount; Eps = epsValue } } }

    /// DPM-Solver with the given algorithm, method, order, steps and eps, the library's defaults otherwise.
    let dpmRun (alg: DpmAlgorithm) (method: DpmMethod) (k: int) (stepCount: int) (epsValue: float) : SamplerRun =
        dpmRunWith { DpmSolver.defaults with Algorithm = alg; Method = method; Order = k } stepCount epsValue

    let dpm =
        { Name = "dpm"
          Summary = "DPM-Solver: exponential integrators of the probability-flow ODE for 10 to 20 model evaluations (Lu et al. 2022)"
          Options =
            [ algorithm
              order
              dpmMethod
              lowerOrderFinal
              thirdOrder
              thresholding
              thresholdQuantile
              thresholdMax ]
          FromCommandLine =
            fun pr ->
                let pick (choices: (string * 'T) list) (o: Option<string>) =
                    choices |> List.find (fun (n, _) -> n = Opt.choiceValue pr o) |> snd
                let settings =
                    { DpmSolver.defaults with
                        Algorithm = pick algorithms algorithm
                        Order = int (Opt.choiceValue pr order)
                        LowerOrderFinal = pick lowerOrderRules lowerOrderFinal
                        ThirdOrder = pick thirdOrders thirdOrder
                        Thresholding =
                            match Opt.choiceValue pr thresholding with
                            | "static" -> Thresholding.Static(pr.GetValue thresholdMax)
                            | "dynamic" -> Thresholding.Dynamic(pr.GetValue thresholdQuantile, pr.GetValue thresholdMax)
                            | _ -> Thresholding.NoThresholding }
                if
                    settings.Thresholding <> Thresholding.NoThresholding
                    && settings.Algorithm <> DpmAlgorithm.DpmSolverPlusPlus
                then
                    raise (
                        ArgumentException(
                            "--thresholding applies to DPM-Solver++ (--algorithm dpm-solver++): it corrects the data prediction.",
                            "--thresholding"
                        )
                    )
                match Opt.choiceValue pr dpmMethod with
                | "adaptive" ->
                    noSteps pr "--method adaptive"
                    let a = DpmSolver.adaptiveDefaults
                    let adaptive = { a with Rtol = valueOr pr rtol a.Rtol; Atol = valueOr pr atol a.Atol }
                    dpmRunWith { settings with Method = DpmMethod.Adaptive adaptive } 0 (pr.GetValue eps)
                | m ->
                    noTolerances pr (sprintf "--method %s" m)
                    let method = if m = "singlestep" then DpmMethod.SingleStep else DpmMethod.MultiStep
                    dpmRunWith { settings with Method = method } (stepsOr pr Sampling.dpmSolver.Schedule.Steps) (pr.GetValue eps)
          Demo = dpmRunWith DpmSolver.defaults Sampling.dpmSolver.Schedule.Steps Sampling.dpmSolver.Schedule.Eps }

    /// Every sampler the command line offers, in the order `demo` runs them.
    let all = [ pc; ode; dpm ]

    /// Add every sampler's own options to a command (the chosen sampler reads its own).
    let addOptions (cmd: Command) =
        for entry in all do
            for o in entry.Options do
                cmd.Add o

    /// Their names.
    let names = all |> List.map (fun e -> e.Name)

    /// The `--sampler` option.
    let choice = Opt.choice "--sampler" "Sampler" names (Some "pc")

    /// The entry named on the command line.
    let selected (pr: ParseResult) = all |> List.find (fun e -> e.Name = Opt.choiceValue pr choice)

    /// `--check-finite`: stop at the first non-finite model output or state (the library's
    /// `Sampling.CheckFinite`, C# `options.CheckFinite`).
    let checkFinite =
        Option<bool>(
            "--check-finite",
            Description =
                "Stop at the first NaN or infinite model output or state, naming the step and the time (default true; false skips the check)",
            DefaultValueFactory = Func<Parsing.ArgumentResult, bool>(fun _ -> true)
        )

    /// The selected sampler's run from the command line. An option of another sampler given on the
    /// command line is an error naming it (the chosen sampler would ignore it).
    let fromCommandLine (pr: ParseResult) : SamplerRun =
        let chosen = selected pr
        for entry in all do
            if entry.Name <> chosen.Name then
                for o in entry.Options do
                    let r = pr.GetResult o
                    if
                        not (isNull r)
                        && not r.Implicit
                        && not (chosen.Options |> List.exists (fun c -> obj.ReferenceEquals(c, o)))
                    then
                        raise (
                            ArgumentException(
                                sprintf
                                    "%s applies to --sampler %s, not to --sampler %s: remove it or choose that sampler."
                                    o.Name
                                    entry.Name
                                    chosen.Name,
                                o.Name
                            )
                        )
        let run = chosen.FromCommandLine pr
        { run with Sampling = { run.Sampling with CheckFinite = pr.GetValue checkFinite } }

    /// The SDEs the command line offers, with the paper's parameters.
    let sdes = [ "vp", Sde.standardVp; "subvp", Sde.standardSubVp; "ve", Sde.standardVe ]

    /// An `--sde` option (`value`: its default; None when the model file decides).
    let sdeOption (description: string) (value: string option) = Opt.choice "--sde" description (List.map fst sdes) value

    /// The SDE named by an `--sde` option, if given.
    let sdeValue (pr: ParseResult) (o: Option<string>) =
        match pr.GetValue o with
        | null -> None
        | name -> sdes |> List.tryFind (fun (n, _) -> n = name.ToLowerInvariant()) |> Option.map snd
