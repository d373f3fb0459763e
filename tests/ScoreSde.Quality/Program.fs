/// Accuracy versus model evaluations of every sampler in the library on two Gaussian mixtures with
/// exact scores. Run: dotnet run --project tests/ScoreSde.Quality -c Release [-- --quick]
module ScoreSde.Quality.Program

open System
open System.Diagnostics
open System.IO
open TorchSharp
open ScoreSde
open ScoreSde.Quality

let private repoRoot () =
    let rec up (d: DirectoryInfo) =
        if isNull d then None
        elif File.Exists(Path.Combine(d.FullName, "ScoreSde.sln")) then Some d.FullName
        else up d.Parent
    match up (DirectoryInfo(Directory.GetCurrentDirectory())) with
    | Some r -> r
    | None -> (up (DirectoryInfo AppContext.BaseDirectory)).Value

type private Options =
    { Quick: bool
      Sweep: bool
      Correctors: bool
      Samples: int
      Problems: string list
      OutDir: string option }

let private usage = "usage: ScoreSde.Quality [--quick | --sweep | --correctors] [--samples N] [--problem a|b] [--out DIR]"

let rec private parse (o: Options) (args: string list) =
    match args with
    | [] -> o
    | "--quick" :: rest -> parse { o with Quick = true } rest
    | "--sweep" :: rest -> parse { o with Sweep = true } rest
    | "--correctors" :: rest -> parse { o with Correctors = true } rest
    | "--samples" :: n :: rest ->
        match Int32.TryParse n with
        | true, v when v >= 100 -> parse { o with Samples = v } rest
        | _ -> failwithf "--samples must be an integer of at least 100 (got %s)" n
    | "--problem" :: p :: rest when p = "a" || p = "b" -> parse { o with Problems = o.Problems @ [ p ] } rest
    | "--out" :: dir :: rest -> parse { o with OutDir = Some dir } rest
    | a :: _ -> failwithf "unknown argument '%s'\n%s" a usage

/// The mixtures named by --problem (both by default).
let private selectedProblems (o: Options) =
    (if o.Problems.IsEmpty then [ "a"; "b" ] else o.Problems)
    |> List.map (function
        | "a" -> Mixture.circle8
        | _ -> Mixture.unequal16)

let private budgetsFull = [| 10; 15; 20; 50; 100; 200; 1000 |]
let private budgetsQuick = [| 10; 20; 100 |]
let private quickNames =
    set
        [ "PC reverse diffusion + Langevin"
          "ODE RK4 (uniform t)"
          "DPM-Solver-3M"
          "DPM-Solver++3M"
          "DPM-Solver-2M, time-quadratic grid" ]

let private run (o: Options) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let sde = VpSde.standard
    let budgets = if o.Quick then budgetsQuick else budgetsFull
    // the full run writes into docs/; a quick run elsewhere unless told
    let outDir =
        match o.OutDir with
        | Some dir -> dir
        | None when o.Quick -> Path.Combine(Path.GetTempPath(), "scoresde-quality")
        | None -> Path.Combine(repoRoot (), "docs")
    Directory.CreateDirectory outDir |> ignore
    let problems = selectedProblems o
    let report = Text.StringBuilder()
    let say (s: string) =
        printfn "%s" s
        report.AppendLine s |> ignore
    say (
        sprintf
            "Sliced Wasserstein-1 (%d random directions) between %d generated and %d exact samples; float64; VP-SDE beta %g..%g, eps 1e-3.%s"
            256
            o.Samples
            o.Samples
            sde.BetaMin
            sde.BetaMax
            (if o.Quick then " Quick mode." else "")
    )
    for problem in problems do
        let clock = Stopwatch.StartNew()
        let model = Model.noise (Mixture.noiseModel sde problem)
        use dirs = Metric.directions problem.Dim 256 7L
        use g1 = new torch.Generator(1UL)
        use g2 = new torch.Generator(2UL)
        use g3 = new torch.Generator(3UL)
        use reference = Mixture.sample problem o.Samples g1
        use second = Mixture.sample problem o.Samples g2
        use xT = torch.randn ([| int64 o.Samples; int64 problem.Dim |], dtype = torch.float64, generator = g3)
        use metric = new Metric.Reference(dirs, reference)
        let floor = metric.Distance second
        let distance (r: SampleResult) =
            use x = r.Samples
            r.Nfe, metric.Distance x
        let samplers = Samplers.fixedBudget |> List.filter (fun s -> not o.Quick || quickNames.Contains s.Name)
        let rows =
            [ for s in samplers ->
                  let cells = budgets |> Array.map (fun b -> s.Run sde model b xT |> Option.map distance)
                  eprintfn
                      "  [%s] %-40s %s (%.0fs)"
                      problem.Name
                      s.Name
                      (cells
                       |> Array.map (function
                           | Some(_, d) -> sprintf "%.4f" d
                           | None -> "-")
                       |> String.concat " ")
                      clock.Elapsed.TotalSeconds
                  { Report.Name = s.Name; Report.Family = s.Family; Report.Cells = cells } ]
        let adaptive =
            if o.Quick then
                []
            else
                [ for s in Samplers.adaptive ->
                      let nfe, d = distance (s.Run sde model xT)
                      eprintfn "  [%s] %-50s NFE %d  %.4f" problem.Name s.Name nfe d
                      s.Name, nfe, d ]
        let converged = rows |> List.find (fun r -> r.Name = "DPM-Solver++3M") |> fun r -> r.Cells.[r.Cells.Length - 1]
        say ""
        say (sprintf "### Problem (%s): %s" problem.Name problem.Description)
        say ""
        say (
            sprintf
                "Noise floor (two exact sets): %.4f. Converged ODE (DPM-Solver++3M, %d evaluations): %.4f."
                floor
                budgets.[budgets.Length - 1]
                (converged |> Option.map snd |> Option.defaultValue nan)
        )
        let best budget =
            match Array.tryFindIndex ((=) budget) budgets with
            | None -> None
            | Some i ->
                rows
                |> List.choose (fun r -> r.Cells.[i] |> Option.map (fun (_, d) -> r.Name, d))
                |> List.sortBy snd
                |> List.tryHead
        for b in [ 10; 20 ] do
            match best b, converged with
            | Some(name, d), Some(_, c) ->
                say (sprintf "Best at %d evaluations: %s, %.4f (%+.1f%% against the converged value)." b name d (100.0 * (d / c - 1.0)))
            | _ -> ()
        say ""
        say (Report.table budgets rows)
        if not adaptive.IsEmpty then
            say "| adaptive sampler | evaluations | sliced W1 |"
            say "|---|---:|---:|"
            for name, nfe, d in adaptive do
                say (sprintf "| %s | %d | %.4f |" name nfe d)
            say ""
        let series =
            [ for r in rows do
                  if r.Family <> "tuned" then
                      yield r.Name, r.Cells |> Array.choose id ]
            @ [ for family in [ "adaptive DPM-Solver-23"; "adaptive DPM-Solver++-23"; "adaptive ODE Dopri5" ] do
                    let points =
                        adaptive
                        |> List.filter (fun (n, _, _) -> n.StartsWith(family + ","))
                        |> List.map (fun (_, n, d) -> n, d)
                        |> List.sortBy fst
                    if not points.IsEmpty then
                        yield family, Array.ofList points ]
        let png = Path.Combine(outDir, sprintf "dpm-solver-%s%s.png" problem.Name (if o.Quick then "-quick" else ""))
        Report.plot png (sprintf "Problem (%s): %s" problem.Name problem.Description) series floor
        say (sprintf "Plot: %s. Time: %.0f s." (Path.GetFileName png) clock.Elapsed.TotalSeconds)
    let md = Path.Combine(outDir, if o.Quick then "dpm-solver-results-quick.md" else "dpm-solver-results.md")
    File.WriteAllText(md, report.ToString())
    printfn "wrote %s" md

/// Every DPM-Solver configuration (algorithm, method, order 2 or 3, lower-order final steps, grid) at
/// 10 and 20 evaluations: which one is best on each problem.
let private sweep (o: Options) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let sde = VpSde.standard
    let outDir = defaultArg o.OutDir (Path.Combine(repoRoot (), "docs"))
    let problems = selectedProblems o
    let report = Text.StringBuilder()
    let say (s: string) =
        printfn "%s" s
        report.AppendLine s |> ignore
    let grids: (string * (int -> TimeGrid)) list =
        [ yield "logSNR", (fun _ -> TimeGrid.LogSnr)
          yield "time-quadratic", (fun _ -> TimeGrid.Quadratic)
          yield "time-uniform", (fun _ -> TimeGrid.Uniform)
          for rho in [ 3.0; 5.0; 7.0 ] do
              yield sprintf "EDM rho %g" rho, (fun n -> TimeGrid.Explicit(Samplers.edmGrid rho sde n 1e-3)) ]
    say (sprintf "DPM-Solver configurations at 10 and 20 evaluations; sliced W1 as in dpm-solver-results.md (%d samples)." o.Samples)
    for problem in problems do
        let model = Model.noise (Mixture.noiseModel sde problem)
        use dirs = Metric.directions problem.Dim 256 7L
        use g1 = new torch.Generator(1UL)
        use g3 = new torch.Generator(3UL)
        use reference = Mixture.sample problem o.Samples g1
        use xT = torch.randn ([| int64 o.Samples; int64 problem.Dim |], dtype = torch.float64, generator = g3)
        use metric = new Metric.Reference(dirs, reference)
        let converged =
            let r = DpmSolver.sample sde model { DpmSolver.defaults with Algorithm = DpmAlgorithm.DpmSolverPlusPlus; Steps = 1000 } xT
            use x = r.Samples
            metric.Distance x
        say ""
        say (sprintf "### Problem (%s): %s; converged (DPM-Solver++3M, 1000 evaluations) %.4f" problem.Name problem.Description converged)
        for budget in [ 10; 20 ] do
            let results =
                [ for gname, grid in grids do
                      for alg, an in [ DpmAlgorithm.DpmSolver, "DPM-Solver-"; DpmAlgorithm.DpmSolverPlusPlus, "DPM-Solver++" ] do
                          for meth, mn in [ DpmMethod.MultiStep, "M"; DpmMethod.SingleStep, "S" ] do
                              for order in [ 2; 3 ] do
                                  // at 10 and 20 evaluations the published rule (below 10 steps) never lowers
                                  for lof in [ LowerOrderFinal.Never; LowerOrderFinal.Always ] do
                                      let settings =
                                          { DpmSolver.defaults with
                                              Algorithm = alg
                                              Method = meth
                                              Order = order
                                              LowerOrderFinal = lof
                                              Steps = budget
                                              Grid = grid budget }
                                      let r = DpmSolver.sample sde model settings xT
                                      use x = r.Samples
                                      yield
                                          sprintf
                                              "%s%d%s, %s grid%s"
                                              an
                                              order
                                              mn
                                              gname
                                              (if lof = LowerOrderFinal.Always then ", lower-order final" else ""),
                                          metric.Distance x ]
                |> List.sortBy snd
            say ""
            say (sprintf "%d evaluations, best 10 of %d configurations:" budget results.Length)
            say ""
            say "| configuration | sliced W1 | against converged |"
            say "|---|---:|---:|"
            for name, dist in List.truncate 10 results do
                say (sprintf "| %s | %.4f | %+.1f%% |" name dist (100.0 * (dist / converged - 1.0)))
    let md = Path.Combine(outDir, "dpm-solver-sweep.md")
    File.WriteAllText(md, report.ToString())
    printfn "wrote %s" md

/// The PC sampler's correctors at 200 steps: reverse diffusion with each corrector (one step per time,
/// snr 0.16) and without one, from the same latents and the benchmark's PC noise seed.
let private correctors (o: Options) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let sde = VpSde.standard
    let steps = 200
    let outDir = defaultArg o.OutDir (Path.Combine(repoRoot (), "docs"))
    let problems = selectedProblems o
    let configs =
        [ "Langevin, batch-averaged norms (default; the paper's code, diffusers' step_correct)",
          Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean }
          "Langevin, per-sample norms", Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.PerSample }
          "annealed Langevin", Corrector.annealedLangevin 0.16 1
          "no corrector", Corrector.NoCorrector ]
    let table =
        [ for problem in problems ->
              let model = Model.noise (Mixture.noiseModel sde problem)
              use dirs = Metric.directions problem.Dim 256 7L
              use g1 = new torch.Generator(1UL)
              use g2 = new torch.Generator(2UL)
              use g3 = new torch.Generator(3UL)
              use reference = Mixture.sample problem o.Samples g1
              use second = Mixture.sample problem o.Samples g2
              use xT = torch.randn ([| int64 o.Samples; int64 problem.Dim |], dtype = torch.float64, generator = g3)
              use metric = new Metric.Reference(dirs, reference)
              let floor = metric.Distance second
              let cells =
                  [ for name, c in configs ->
                        let settings = { Sampler.pcDefaults with Corrector = c; Steps = steps }
                        let r = Sampler.predictorCorrector sde model settings (Noise.fromSeed Samplers.pcSeed torch.CPU) xT
                        use x = r.Samples
                        let d = metric.Distance x
                        eprintfn "  [%s] %-40s %.4f (%d evaluations)" problem.Name name d r.Nfe
                        d ]
              problem, floor, cells ]
    let report = Text.StringBuilder()
    let say (s: string) =
        printfn "%s" s
        report.AppendLine s |> ignore
    say (
        sprintf
            "Reverse diffusion + corrector, %d steps to eps 1e-3, snr 0.16, one corrector step per time; sliced W1 (256 directions) between %d generated and %d exact samples; float64."
            steps
            o.Samples
            o.Samples
    )
    say ""
    say (
        "| corrector | "
        + (table |> List.map (fun (p, _, _) -> sprintf "(%s) %s" p.Name p.Description) |> String.concat " | ")
        + " |"
    )
    say ("|---|" + (table |> List.map (fun _ -> "---:|") |> String.concat ""))
    let none = table |> List.map (fun (_, _, cells) -> List.last cells)
    configs
    |> List.iteri (fun i (name, _) ->
        let cell (_, _, cells: float list) n =
            let d = cells.[i]
            if i = configs.Length - 1 then
                sprintf "%.4f" d
            else
                sprintf "%.4f (%+.0f%%)" d (100.0 * (d / n - 1.0))
        say (sprintf "| %s | %s |" name (List.map2 cell table none |> String.concat " | ")))
    say (sprintf "| noise floor (two exact sets) | %s |" (table |> List.map (fun (_, f, _) -> sprintf "%.4f" f) |> String.concat " | "))
    Directory.CreateDirectory outDir |> ignore
    let md = Path.Combine(outDir, "correctors-results.md")
    File.WriteAllText(md, report.ToString())
    printfn "wrote %s" md

[<EntryPoint>]
let main argv =
    try
        let o =
            parse { Quick = false; Sweep = false; Correctors = false; Samples = 10000; Problems = []; OutDir = None } (List.ofArray argv)
        if o.Sweep then sweep o
        elif o.Correctors then correctors o
        else run o
        0
    with Failure msg ->
        eprintfn "%s" msg
        2
