/// The documentation site builds: `dotnet fsi build.fsx docs` runs fsdocs over the built assemblies'
/// XML docs and the docs/ pages; here the same fsdocs command writes into a temporary folder.
module ScoreSde.Tests.DocsSiteTests

open System
open System.Diagnostics
open System.IO
open Expecto
open ScoreSde.Tests.Common

[<Tests>]
let tests =
    testList
        "Docs site"
        [ test "fsdocs builds the API reference and the docs/ pages without problems (--strict)" {
              use temp = tempDir "docsite"
              let output = Path.Combine(temp.Path, "site")
              let sw = Stopwatch.StartNew()
              let code, log =
                  DocsTests.run
                      "dotnet"
                      [ "fsdocs"
                        "build"
                        "--properties"
                        "Configuration=" + buildConfiguration
                        // only the libraries: cracking every project of the solution needs all of them
                        // restored, which a clean checkout's test build does not do
                        "--projects"
                        "src/ScoreSde/ScoreSde.fsproj"
                        "src/ScoreSde.CSharp/ScoreSde.CSharp.csproj"
                        "--output"
                        output
                        "--strict" ]
                      DocsTests.repoRoot
                      (TimeSpan.FromMinutes 5.0)
              printfn "fsdocs build: %.1f s" sw.Elapsed.TotalSeconds
              if code <> 0 then
                  failtestf "fsdocs build --strict exited with %d:\n%s" code log
              for page in
                  [ "index.html"
                    "reference/index.html"
                    "reference/scoresde-sampler.html"
                    "reference/scoresde-csharp-sampler.html"
                    "likelihood.html" ] do
                  Expect.isTrue (File.Exists(Path.Combine(output, page))) (sprintf "%s generated" page)
              let sampler = File.ReadAllText(Path.Combine(output, "reference", "scoresde-csharp-sampler.html"))
              Expect.stringContains sampler "PredictorCorrector" "the C# Sampler page documents PredictorCorrector"
          } ]
