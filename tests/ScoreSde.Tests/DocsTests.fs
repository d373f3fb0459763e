module ScoreSde.Tests.DocsTests

open System
open System.Diagnostics
open System.IO
open Expecto

/// The repository root: the first ancestor of the test binary holding ScoreSde.sln.
let repoRoot =
    let rec up (d: DirectoryInfo) =
        if isNull d then failwith "ScoreSde.sln not found above the test binary"
        elif File.Exists(Path.Combine(d.FullName, "ScoreSde.sln")) then d.FullName
        else up d.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

/// Run a process to completion; returns exit code and combined output.
let run (file: string) (args: string list) (workDir: string) (timeout: TimeSpan) =
    let psi =
        ProcessStartInfo(file, args, WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true)
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    if not (p.WaitForExit(int timeout.TotalMilliseconds)) then
        p.Kill true
        failtestf "%s %s timed out after %O" file (String.Join(" ", args)) timeout
    p.ExitCode, out.Result + err.Result

[<Tests>]
let tests =
    let scripts = Directory.GetFiles(Path.Combine(repoRoot, "docs"), "*.fsx") |> Array.sort
    testList
        "Docs scripts"
        [ yield test "docs/ holds executable F# scripts" { Expect.isNonEmpty scripts "scripts in docs/" }
          for script in scripts ->
              test (sprintf "docs/%s runs" (Path.GetFileName script)) {
                  let code, output = run "dotnet" [ "fsi"; "--quiet"; "--exec"; script ] repoRoot (TimeSpan.FromMinutes 5.0)
                  if code <> 0 then
                      failtestf "docs/%s exited with %d:\n%s" (Path.GetFileName script) code output
              } ]
