/// Accuracy versus model evaluations of every sampler in the library on two Gaussian mixtures with
/// exact scores. Run: dotnet run --project tests/ScoreSde.Quality -c Release [-- --quick]
module ScoreSde.Quality.Program

open System
open System.Diagnostics
open System.IO
open TorchSharp
open ScoreSde
open ScoreSde.Quality
open ScoreSde.Quality.Checks

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
      Checks: bool
      Correctors: bool
      Pc: bool
      Grids: bool
      Conditional: bool
      Guided: bool
      Samples: int
      Problems: string list
      Sdes: string list
      OutDir: string option }

let private usage =
    "usage: ScoreSde.Quality [--quick | --sweep | --checks | --correctors | --pc | --grids | --conditional | --guided] [--samples N] [--problem a|b] [--sde vp|subvp|ve] [--out DIR]"

/// The SDEs, with the paper's parameters.
let private sdes = [ "vp", Sde.standardVp; "subvp", Sde.standardSubVp; "ve", Sde.standardVe ]

/// Where a run writes its tables: --out, else the repository's docs/.
let private docsDir (o: Options) =
    match o.OutDir with
    | Some dir -> dir
    | None -> Path.Combine(repoRoot (), "docs")

let rec private parse (o: Options) (args: string list) =
    match args with
    | [] -> o
    | "--quick" :: rest -> parse { o with Quick = true } rest
    | "--sweep" :: rest -> parse { o with Sweep = true } rest
    | "--checks" :: rest -> parse { o with Checks = true } rest
    | "--correctors" :: rest -> parse { o with Correctors = true } rest
    | "--pc" :: rest -> parse { o with Pc = true } rest
    | "--grids" :: rest -> parse { o with Grids = true } rest
    | "--conditional" :: rest -> parse { o with Conditional = true } rest
    | "--guided" :: rest -> parse { o with Guided = true } rest
    | "--samples" :: n :: rest ->
        match Int32.TryParse n with
        | true, v when v >= 100 -> parse { o with Samples = v } rest
        | _ -> failwithf "--samples must be an integer of at least 100 (got %s)" n
    | "--problem" :: p :: rest when p = "a" || p = "b" -> parse { o with Problems = o.Problems @ [ p ] } rest
    | "--sde" :: s :: rest when sdes |> List.exists (fun (n, _) -> n = s) -> parse { o with Sdes = o.Sdes @ [ s ] } rest
    | "--out" :: dir :: rest -> parse { o with OutDir = Some dir } rest
    | a :: _ -> failwithf "unknown argument '%s'\n%s" a usage

let private budgetsFull = [| 10; 15; 20; 50; 100; 200; 1000 |]
let private budgetsQuick = [| 10; 20; 100 |]
let private quickNames =
    set
        [ "PC reverse diffusion + Langevin"
          "ODE RK4 (uniform t)"
          "DPM-Solver-3M"
          "DPM-Solver++3M"
          "DPM-Solver-2M, time-quadratic grid" ]

let private selected (o: Options) =
    let problems =
        (if o.Problems.IsEmpty then [ "a"; "b" ] else o.Problems)
        |> List.map (function
            | "a" -> Mixture.circle8
            | _ -> Mixture.unequal16)
    let chosen = if o.Sdes.IsEmpty then sdes else sdes |> List.filter (fun (n, _) -> List.contains n o.Sdes)
    problems, chosen

let private run (o: Options) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let budgets = if o.Quick then budgetsQuick else budgetsFull
    // the full run writes into docs/; a quick run elsewhere unless told
    let outDir =
        match o.OutDir with
        | Some dir -> dir
        | None when o.Quick -> Path.Combine(Path.GetTempPath(), "scoresde-quality")
        | None -> Path.Combine(repoRoot (), "docs")
    Directory.CreateDirectory outDir |> ignore
    let problems, chosen = selected o
    let suffix = if o.Quick then "-quick" else ""
    let checkRows = ResizeArray<string>()
    for sdeName, sde in chosen do
        let report = Report.Log()
        let say = report.Say
        say (
            sprintf
                "Sliced Wasserstein-1 (%d random directions) between %d generated and %d exact samples; float64; %s, eps %g.%s"
                256
                o.Samples
                o.Samples
                (Sde.describe sde)
                Samplers.eps
                (if o.Quick then " Quick mode." else "")
        )
        for problem in problems do
            let clock = Stopwatch.StartNew()
            use setup = new Setup(problem, sde, o.Samples)
            let samplers = Samplers.fixedBudget |> List.filter (fun s -> not o.Quick || quickNames.Contains s.Name)
            let rows =
                [ for s in samplers ->
                      let cells = budgets |> Array.map (fun b -> s.At sde b |> Option.map setup.Measure)
                      eprintfn
                          "  [%s %s] %-40s %s (%.0fs)"
                          sdeName
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
                          let nfe, d = setup.Measure s.Sampling
                          eprintfn "  [%s %s] %-50s NFE %d  %.4f" sdeName problem.Name s.Name nfe d
                          s.Name, nfe, d ]
            let converged = rows |> List.find (fun r -> r.Name = "DPM-Solver++3M") |> fun r -> r.Cells.[r.Cells.Length - 1]
            say ""
            say (sprintf "### Problem (%s): %s" problem.Name problem.Description)
            say ""
            say (
                sprintf
                    "Noise floor (two exact sets): %.4f. Converged ODE (DPM-Solver++3M, %d evaluations): %.4f."
                    setup.Floor
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
            if not o.Quick then
                checkRows.Add(fst (checks sde problem setup))
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
            let png = Path.Combine(outDir, sprintf "quality-%s-%s%s.png" sdeName problem.Name suffix)
            Report.plot png (sprintf "%s, problem (%s): %s" (Sde.describe sde) problem.Name problem.Description) series setup.Floor
            say (sprintf "Plot: %s. Time: %.0f s." (Path.GetFileName png) clock.Elapsed.TotalSeconds)
        let md = Path.Combine(outDir, sprintf "quality-%s%s.md" sdeName suffix)
        File.WriteAllText(md, report.ToString())
        printfn "wrote %s" md
    if checkRows.Count > 0 then
        let md = Path.Combine(outDir, "quality-checks.md")
        File.WriteAllText(md, checksHeader + "\n" + String.Join("\n", checkRows) + "\n")
        printfn "%s\n%s\nwrote %s" checksHeader (String.Join("\n", checkRows)) md

/// Only the checks of issue 12 (item 4), for every chosen SDE and problem.
let private checksOnly (o: Options) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let problems, chosen = selected o
    printfn "%s" checksHeader
    let results =
        [ for _, sde in chosen do
              for problem in problems do
                  use setup = new Setup(problem, sde, o.Samples)
                  let _, ok = checks sde problem setup
                  yield ok ]
    if List.forall id results then 0 else 1

/// Every DPM-Solver configuration (algorithm, method, order 2 or 3, lower-order final steps, grid) at
/// 10 and 20 evaluations: which one is best on each problem.
let private sweep (o: Options) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let outDir = docsDir o
    let problems, chosen = selected o
    for sdeName, sde in chosen do
        let report = Report.Log()
        let say = report.Say
        let grids: (string * (int -> Schedule)) list =
            [ yield "logSNR", (fun n -> Schedule.create TimeGrid.LogSnr n Samplers.eps)
              yield "time-quadratic", (fun n -> Schedule.create TimeGrid.Quadratic n Samplers.eps)
              yield "time-uniform", (fun n -> Schedule.uniform n Samplers.eps)
              for rho in [ 3.0; 5.0; 7.0 ] do
                  yield sprintf "EDM rho %g" rho, (fun n -> Schedule.ofTimes (Samplers.edmGrid rho sde n Samplers.eps)) ]
        say (
            sprintf
                "DPM-Solver configurations at 10 and 20 evaluations, %s; sliced W1 as in quality-%s.md (%d samples)."
                (Sde.describe sde)
                sdeName
                o.Samples
        )
        for problem in problems do
            use setup = new Setup(problem, sde, o.Samples)
            let _, converged = setup.Measure Samplers.converged
            say ""
            say (
                sprintf "### Problem (%s): %s; converged (DPM-Solver++3M, 1000 evaluations) %.4f" problem.Name problem.Description converged
            )
            for budget in [ 10; 20 ] do
                let results =
                    [ for gname, grid in grids do
                          for settings, an in [ Samplers.noisePrediction, "DPM-Solver-"; Samplers.dataPrediction, "DPM-Solver++" ] do
                              for meth, mn in [ DpmMethod.MultiStep, "M"; DpmMethod.SingleStep, "S" ] do
                                  for order in [ 2; 3 ] do
                                      // at 10 and 20 evaluations the published rule (below 10 steps) never lowers
                                      for lof in [ LowerOrderFinal.Never; LowerOrderFinal.Always ] do
                                          let s = { settings with Method = meth; Order = order; LowerOrderFinal = lof }
                                          let _, d = setup.Measure(Samplers.dpmSampling s (grid budget) Finish.NoFinish)
                                          let lower = if lof = LowerOrderFinal.Always then ", lower-order final" else ""
                                          yield sprintf "%s%d%s, %s grid%s" an order mn gname lower, d ]
                    |> List.sortBy snd
                say ""
                say (sprintf "%d evaluations, best 10 of %d configurations:" budget results.Length)
                say ""
                say "| configuration | sliced W1 | against converged |"
                say "|---|---:|---:|"
                for name, dist in List.truncate 10 results do
                    say (sprintf "| %s | %.4f | %+.1f%% |" name dist (100.0 * (dist / converged - 1.0)))
        let md = Path.Combine(outDir, sprintf "dpm-solver-sweep-%s.md" sdeName)
        File.WriteAllText(md, report.ToString())
        printfn "wrote %s" md

/// The PC sampler's correctors at 200 steps on the VP-SDE: reverse diffusion with each corrector (one
/// step per time, snr 0.16) and without one, from the same latents and the benchmark's PC noise seed.
let private correctors (o: Options) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let sde = Sde.standardVp
    let steps = 200
    let outDir = docsDir o
    let problems, _ = selected o
    let configs =
        [ "Langevin, batch-averaged norms (default; the paper's code, diffusers' step_correct)",
          Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean }
          "Langevin, per-sample norms", Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.PerSample }
          "annealed Langevin", Corrector.annealedLangevin 0.16 1
          "no corrector", Corrector.NoCorrector ]
    let table =
        [ for problem in problems ->
              use setup = new Setup(problem, sde, o.Samples)
              let cells =
                  [ for name, c in configs ->
                        let nfe, d = setup.Measure(Samplers.pcSampling Predictor.ReverseDiffusion c steps)
                        eprintfn "  [%s] %-40s %.4f (%d evaluations)" problem.Name name d nfe
                        d ]
              problem, setup.Floor, cells ]
    let report = Report.Log()
    let say = report.Say
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
            parse
                { Quick = false
                  Sweep = false
                  Checks = false
                  Correctors = false
                  Pc = false
                  Grids = false
                  Conditional = false
                  Guided = false
                  Samples = 10000
                  Problems = []
                  Sdes = []
                  OutDir = None }
                (List.ofArray argv)
        if o.Sweep then
            sweep o
        elif o.Checks then
            exit (checksOnly o)
        elif o.Correctors then
            correctors o
        elif o.Pc || o.Grids then
            Native.ensureLoaded ()
            torch.set_num_threads 1
            let problems, chosen = selected o
            let file, study = if o.Pc then "pc-1000-steps.md", Studies.pc else "dpm-grids-20.md", Studies.dpmGrids
            let md = Path.Combine(docsDir o, file)
            File.WriteAllText(md, study chosen problems o.Samples)
            printfn "wrote %s" md
        elif o.Guided then
            let problems, chosen = selected o
            GuidedBench.run chosen problems o.Samples (docsDir o)
        elif o.Conditional then
            let problems, chosen = selected o
            ConditionalBench.run chosen problems o.Samples (docsDir o)
        else
            run o
        0
    with Failure msg ->
        eprintfn "%s" msg
        2
