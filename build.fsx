// ScoreSde build script (plain F# script; FAKE 6 does not restore offline).
//   dotnet fsi build.fsx build    restore and build everything in Release
//   dotnet fsi build.fsx test     unit tests, property tests and the docs/ scripts
//   dotnet fsi build.fsx clean    remove bin/ and obj/ folders
//   dotnet fsi build.fsx pack     NuGet packages ScoreSde and ScoreSde.CSharp (+ symbols) into out/packages
//   dotnet fsi build.fsx docs     API reference (XML docs) and docs/ pages with fsdocs, into out/docs
//   dotnet fsi build.fsx quality  accuracy-versus-evaluations benchmark of every sampler on the three
//                                 SDEs (about 45 min; writes docs/quality-{vp,subvp,ve}.md, their
//                                 plots and docs/quality-checks.md)
//   dotnet fsi build.fsx quality-quick   the same on fewer samplers and budgets (a few minutes)
//   dotnet fsi build.fsx bench [--quick] [--filter PATTERN] [other benchmark options]
//                                  BenchmarkDotNet suite (docs/performance.md); the options after
//                                  `bench` go to tests/ScoreSde.Benchmarks
open System
open System.Diagnostics
open System.IO

let root = __SOURCE_DIRECTORY__

let run (file: string) (args: string) =
    printfn "> %s %s" file args
    let psi = ProcessStartInfo(file, args, WorkingDirectory = root, UseShellExecute = false)
    use p = Process.Start psi
    p.WaitForExit()
    if p.ExitCode <> 0 then
        eprintfn "'%s %s' failed with exit code %d" file args p.ExitCode
        exit p.ExitCode

let bench (options: string list) =
    let quoted = options |> List.map (fun o -> if o.Contains ' ' || o.Contains '*' then "\"" + o + "\"" else o)
    run "dotnet" ("run --project tests/ScoreSde.Benchmarks -c Release -- " + String.Join(" ", quoted))

/// The documentation site: fsdocs reads the built assemblies' XML docs (API reference) and renders
/// docs/*.md and docs/*.fsx (not executed here: the test suite runs the scripts). Offline; --strict
/// fails on documentation problems.
let docs () =
    run "dotnet" "tool restore"
    run "dotnet" "build src/ScoreSde.CSharp -c Release"
    let output = Path.Combine(root, "out", "docs")
    let rootUrl = Uri(output + "/").AbsoluteUri // links work when the pages are opened from disk
    run
        "dotnet"
        (sprintf
            "fsdocs build --properties Configuration=Release --projects src/ScoreSde/ScoreSde.fsproj src/ScoreSde.CSharp/ScoreSde.CSharp.csproj --output \"%s\" --clean --strict --parameters root %s fsdocs-license-link %s"
            output
            rootUrl
            (Uri(Path.Combine(root, "LICENSE")).AbsoluteUri))
    printfn "documentation: %s" (Path.Combine(output, "index.html"))

let targets: (string * string * (unit -> unit)) list =
    [ "build", "restore and build the solution (Release)", (fun () -> run "dotnet" "build ScoreSde.sln -c Release")
      "test", "run the test suite, which also executes docs/*.fsx", (fun () -> run "dotnet" "run --project tests/ScoreSde.Tests -c Release")
      "bench", "benchmarks (options after it: --quick, --filter PATTERN, --threads 1,2, --no-memory, --no-paired)", (fun () -> bench [])
      "quality",
      "accuracy versus evaluations of every sampler on the three SDEs, into docs/ (~45 min)",
      (fun () -> run "dotnet" "run --project tests/ScoreSde.Quality -c Release")
      "quality-quick",
      "the quality benchmark on fewer samplers and budgets (a few minutes)",
      (fun () -> run "dotnet" "run --project tests/ScoreSde.Quality -c Release -- --quick")
      "pack",
      "NuGet packages ScoreSde and ScoreSde.CSharp with symbols, into out/packages",
      (fun () -> run "dotnet" "pack ScoreSde.sln -c Release")
      "docs", "API reference and docs/ pages (fsdocs), into out/docs", docs
      "clean",
      "delete bin/ and obj/ under src/ and tests/",
      (fun () ->
          for dir in [ "src"; "tests" ] do
              for d in Directory.GetDirectories(Path.Combine(root, dir), "*", SearchOption.AllDirectories) do
                  let name = Path.GetFileName d
                  if (name = "bin" || name = "obj") && Directory.Exists d then
                      printfn "removing %s" (Path.GetRelativePath(root, d))
                      Directory.Delete(d, true)) ]

let usage () =
    printfn "usage: dotnet fsi build.fsx <target>..."
    for name, doc, _ in targets do
        printfn "  %-14s %s" name doc

match fsi.CommandLineArgs |> Array.skip 1 |> List.ofArray with
| [] ->
    usage ()
    exit 2
| "bench" :: options -> bench options
| names ->
    for name in names do
        match targets |> List.tryFind (fun (n, _, _) -> n = name) with
        | Some(_, _, action) -> action ()
        | None ->
            eprintfn "unknown target '%s'" name
            usage ()
            exit 2
