/// Entry point: `dotnet run --project tests/ScoreSde.Benchmarks -c Release -- [--quick] [--threads 1,2]
/// [--memory-steps N | --no-memory] [--no-paired] [BenchmarkDotNet options, e.g. --filter *StepBenchmarks*]`.
///
/// Every case runs in this process (BenchmarkDotNet's in-process emit toolchain): the benchmarks need
/// TorchSharp's native libraries as this project's build laid them out (the GLIBCXX patch of
/// Directory.Build.targets applies to this output folder), and a process per case would rebuild a
/// project per job. The job is short on purpose (see docs/performance.md): 1 launch, 3 warm-up and 10
/// measured iterations of about 250 ms each (`--quick`: 2 and 5 of 100 ms, one thread).
module ScoreSde.Benchmarks.Program

open System
open System.IO
open BenchmarkDotNet.Configs
open BenchmarkDotNet.Jobs
open BenchmarkDotNet.Running
open BenchmarkDotNet.Toolchains.InProcess.Emit
open Perfolizer.Horology
open ScoreSde.Benchmarks.Setup

/// `--unet [--forward N] [--train N] [--sample N] [--evaluations E] [--batch B] [--threads T]
/// [--configs tutorial|default|both|run|all]`: the
/// U-Net against PyTorch (UNetSpeed.fs), instead of the BenchmarkDotNet suite.
let private unet (argv: string[]) =
    let rec parse (o: UNetSpeed.Options) (args: string list) =
        match args with
        | "--unet" :: rest -> parse o rest
        | "--batch" :: v :: rest -> parse { o with Batch = int v } rest
        | "--threads" :: v :: rest -> parse { o with Threads = int v } rest
        | "--forward" :: v :: rest -> parse { o with Forward = int v } rest
        | "--train" :: v :: rest -> parse { o with Train = int v } rest
        | "--sample" :: v :: rest -> parse { o with Sample = int v } rest
        | "--evaluations" :: v :: rest -> parse { o with Evaluations = int v } rest
        | "--configs" :: "run" :: rest -> parse { o with Configs = [ UNetSpeed.defaultConfigs.[2] ] } rest
        | "--configs" :: "all" :: rest -> parse { o with Configs = UNetSpeed.defaultConfigs } rest
        | "--configs" :: "tutorial" :: rest -> parse { o with Configs = [ UNetSpeed.defaultConfigs.[0] ] } rest
        | "--configs" :: "default" :: rest -> parse { o with Configs = [ UNetSpeed.defaultConfigs.[1] ] } rest
        | "--configs" :: "both" :: rest -> parse { o with Configs = UNetSpeed.defaultConfigs.[0..1] } rest
        | a :: _ -> failwithf "unknown --unet option %s" a
        | [] -> o
    let options = parse UNetSpeed.defaults (List.ofArray argv)
    let report =
        UNetSpeed.run options (sprintf "dotnet run --project tests/ScoreSde.Benchmarks -c Release -- %s" (String.Join(" ", argv)))
    let dir = Path.Combine(Environment.CurrentDirectory, "BenchmarkDotNet.Artifacts")
    Directory.CreateDirectory dir |> ignore
    let path = Path.Combine(dir, "scoresde-unet-report.md")
    File.WriteAllText(path, report)
    printfn "Report written to %s" path
    0

/// The BenchmarkDotNet suite.
let benchmarks (argv: string[]) =
    ScoreSde.Native.ensureLoaded ()
    let mutable quick = false
    let mutable memorySteps = Some 10000
    let mutable pairedRounds = Some 40
    let bdnArgs = ResizeArray<string>()
    let rec parse (args: string list) =
        match args with
        | "--quick" :: rest ->
            quick <- true
            parse rest
        | "--threads" :: v :: rest ->
            threadCounts <- v.Split(',') |> Array.map int
            parse rest
        | "--memory-steps" :: v :: rest ->
            memorySteps <- Some(int v)
            parse rest
        | "--no-memory" :: rest ->
            memorySteps <- None
            parse rest
        | "--no-paired" :: rest ->
            pairedRounds <- None
            parse rest
        | a :: rest ->
            bdnArgs.Add a
            parse rest
        | [] -> ()
    parse (List.ofArray argv)
    if quick then
        threadCounts <- [| 1 |]
        memorySteps <- memorySteps |> Option.map (fun n -> min n 1000)
        pairedRounds <- pairedRounds |> Option.map (fun n -> min n 10)
    if not (bdnArgs.Contains "--filter") then
        bdnArgs.AddRange [ "--filter"; "*" ]
    let job =
        Job.Default
            .WithToolchain(InProcessEmitToolchain(TimeSpan.FromMinutes 30.0, true))
            .WithLaunchCount(1)
            .WithWarmupCount(if quick then 2 else 3)
            .WithIterationCount(if quick then 5 else 10)
            .WithIterationTime(TimeInterval.FromMilliseconds(if quick then 100.0 else 250.0))
            .WithId(if quick then "quick" else "short")
    let config = ManualConfig.Create(DefaultConfig.Instance).AddJob(job)
    let summaries =
        BenchmarkSwitcher.FromAssembly(typeof<StepBenchmarks>.Assembly).Run(bdnArgs.ToArray(), config)
        |> Seq.toArray
    let report =
        [ sprintf "Machine: %s" (Report.machine ())
          sprintf "Command: dotnet run --project tests/ScoreSde.Benchmarks -c Release -- %s" (String.Join(" ", argv))
          ""
          "Steps (float32, one step from t = 0.5, dt = 1/1000):"
          ""
          Report.stepTable summaries
          match pairedRounds with
          | Some n ->
              "StepPred against the noise floor, measured in alternation (blocks of about 20 ms):\n\n"
              + Paired.table n
          | None -> ""
          "Samplers (model share subtracted):"
          ""
          Report.samplerTable summaries
          match memorySteps with
          | Some n -> "Memory over long runs:\n\n" + Report.memoryTable n
          | None -> "" ]
        |> String.concat "\n"
    printfn "\n%s" report
    let dir = Path.Combine(Environment.CurrentDirectory, "BenchmarkDotNet.Artifacts")
    Directory.CreateDirectory dir |> ignore
    let path = Path.Combine(dir, "scoresde-report.md")
    File.WriteAllText(path, report)
    printfn "Report written to %s" path
    0

[<EntryPoint>]
let main argv =
    match argv with
    | [| "--native-startup-child" |] -> NativeStartup.child ()
    | [| "--native-startup" |] -> NativeStartup.run 15
    | [| "--native-startup"; rounds |] -> NativeStartup.run (int rounds)
    | _ when Array.contains "--unet" argv ->
        ScoreSde.Native.ensureLoaded ()
        unet argv
    | [| "--finite-scan" |] ->
        ScoreSde.Native.ensureLoaded ()
        printfn "%s" (FiniteCheck.scanTable ())
        0
    | [| "--finite-check" |]
    | [| "--finite-check"; _ |] ->
        // the cost of Sampling.CheckFinite, on and off in alternation (docs/performance.md)
        ScoreSde.Native.ensureLoaded ()
        let rounds = if argv.Length = 2 then int argv.[1] else 20
        threadCounts <- [| 1 |]
        printfn "Command: dotnet run --project tests/ScoreSde.Benchmarks -c Release -- %s" (String.Join(" ", argv))
        printfn "Machine: %s\n" (Report.machine ())
        printfn "%s" (FiniteCheck.table rounds [ "4x2"; "256x2"; "4x3x64x64"; "16x3x64x64" ])
        0
    | _ -> benchmarks argv
