// Tables of a run.sh output folder: per case, the median over rounds of each side's per-round medians,
// their ratio (after / before), the range of the per-round ratios (round r's after over round r's
// before), each side's spread (range of its per-round medians over their median) and managed bytes.
//   dotnet fsi tests/ScoreSde.Benchmarks/compare/Summary.fsx OUT_DIR

open System
open System.IO
open System.Text.Json

let dir = fsi.CommandLineArgs.[1]

let median (xs: float seq) =
    let a = Seq.toArray xs |> Array.sort
    if a.Length = 0 then nan
    elif a.Length % 2 = 1 then a.[a.Length / 2]
    else 0.5 * (a.[a.Length / 2 - 1] + a.[a.Length / 2])

let spread (xs: float[]) = if xs.Length = 0 then nan else (Array.max xs - Array.min xs) / median xs * 100.0

/// Per side, per round (in order): case name -> (median ms, managed bytes, steps).
type Rounds = Map<string, (float * float * int)>[]

let rounds (side: string) (read: string -> (string * (float * float * int)) seq) (prefix: string) : Rounds =
    Directory.GetFileSystemEntries(dir, sprintf "%s-%s-*" prefix side)
    |> Array.map (fun p -> int (p.Substring(p.LastIndexOf('-') + 1).Split('.').[0]), p)
    |> Array.sortBy fst
    |> Array.map (fun (_, p) -> read p |> Map.ofSeq)

let readFsi (path: string) =
    File.ReadAllLines path
    |> Seq.filter (fun l -> l.Split('\t').Length = 6)
    |> Seq.map (fun l ->
        let f = l.Split('\t')
        f.[1], (float f.[3], float f.[4], int f.[2]))

let readBdn (path: string) =
    let results = Path.Combine(path, "BenchmarkDotNet.Artifacts", "results")
    if not (Directory.Exists results) then
        Seq.empty
    else
        Directory.GetFiles(results, "*-report-full-compressed.json")
        |> Seq.append (Directory.GetFiles(results, "*-report.json"))
        |> Seq.distinctBy (fun f -> Path.GetFileName(f).Split('-').[0])
        |> Seq.collect (fun f ->
            use doc = JsonDocument.Parse(File.ReadAllText f)
            [ for b in doc.RootElement.GetProperty("Benchmarks").EnumerateArray() do
                  let name = b.GetProperty("Type").GetString() + "." + b.GetProperty("Method").GetString()
                  let pars = b.GetProperty("Parameters").GetString().Replace("&", ", ")
                  let med = b.GetProperty("Statistics").GetProperty("Median").GetDouble() / 1e6
                  let bytes = b.GetProperty("Memory").GetProperty("BytesAllocatedPerOperation").GetDouble()
                  yield sprintf "%s (%s)" name pars, (med, bytes, 1) ])

let table (title: string) (before: Rounds) (after: Rounds) =
    let n = min before.Length after.Length
    if n > 0 then
        printfn "%s (%d rounds per side)\n" title n
        printfn
            "| case | before (ms) | after (ms) | after / before | per-round ratios | spread before, after | managed bytes per run before, after |"
        printfn "|---|---|---|---|---|---|---|"
        for name in before.[0] |> Map.toSeq |> Seq.map fst |> Seq.sortBy (fun k -> k) do
            let get (r: Rounds) i = r.[i] |> Map.tryFind name
            let b =
                [| for i in 0 .. n - 1 do
                       match get before i with
                       | Some(m, _, _) -> yield m
                       | None -> () |]
            let a =
                [| for i in 0 .. n - 1 do
                       match get after i with
                       | Some(m, _, _) -> yield m
                       | None -> () |]
            if b.Length = n && a.Length = n then
                let ratios = Array.map2 (fun x y -> y / x) b a
                let bytes (r: Rounds) =
                    median
                        [ for i in 0 .. n - 1 ->
                              match get r i with
                              | Some(_, by, _) -> by
                              | None -> nan ]
                printfn
                    "| %s | %.4f | %.4f | %.3f | %.2f to %.2f | %.0f%%, %.0f%% | %.0f, %.0f |"
                    name
                    (median b)
                    (median a)
                    (median a / median b)
                    (Array.min ratios)
                    (Array.max ratios)
                    (spread b)
                    (spread a)
                    (bytes before)
                    (bytes after)
        printfn ""

let fsiBefore = rounds "before" readFsi "fsi"
let fsiAfter = rounds "after" readFsi "fsi"
if fsiBefore.Length > 0 then
    table "Timing scripts (Before.fsx, After.fsx)" fsiBefore fsiAfter

let bdnBefore = rounds "before" readBdn "bdn"
let bdnAfter = rounds "after" readBdn "bdn"
if bdnBefore.Length > 0 then
    table "BenchmarkDotNet suite (--quick)" bdnBefore bdnAfter

/// The memory pass of each BenchmarkDotNet run (scoresde-report.md): sampler -> tensors created per step
/// beyond the model's, managed bytes per step.
let memoryRows (side: string) =
    Directory.GetDirectories(dir, sprintf "bdn-%s-*" side)
    |> Array.choose (fun d ->
        let report = Path.Combine(d, "BenchmarkDotNet.Artifacts", "scoresde-report.md")
        if File.Exists report then
            File.ReadAllLines report
            |> Array.skipWhile (fun l -> not (l.StartsWith "| sampler (") || not (l.Contains "tensors created"))
            |> Array.skip 2
            |> Array.takeWhile (fun l -> l.StartsWith "|")
            |> Array.map (fun l ->
                let f = l.Split('|', StringSplitOptions.TrimEntries)
                f.[1], (float f.[2], float f.[3]))
            |> Some
        else
            None)

let memBefore, memAfter = memoryRows "before", memoryRows "after"
if memBefore.Length > 0 && memAfter.Length > 0 then
    printfn "Memory pass of the same runs (1000 steps, medians over rounds)\n"
    printfn "| sampler | tensors per step beyond the model's, before, after | managed bytes per step, before, after |"
    printfn "|---|---|---|"
    for name, _ in memBefore.[0] do
        let pick (runs: (string * (float * float))[][]) f =
            median
                [ for r in runs do
                      for n, v in r do
                          if n = name then
                              yield f v ]
        printfn "| %s | %.2f, %.2f | %.0f, %.0f |" name (pick memBefore fst) (pick memAfter fst) (pick memBefore snd) (pick memAfter snd)
