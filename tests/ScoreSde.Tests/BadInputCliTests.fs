/// Bad input on the command line (issue 11, items 3 and 4): unwritable outputs, failed writes, usage
/// errors, a model that outputs NaN.
module ScoreSde.Tests.BadInputCliTests

open System
open System.Text.RegularExpressions
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.BadInputTests

/// Every file and folder under `dir`, hidden ones included (temporary names start with a dot).
let private entries (dir: string) =
    IO.Directory.GetFileSystemEntries(dir, "*", IO.SearchOption.AllDirectories)
    |> Array.map (fun p -> IO.Path.GetRelativePath(dir, p))
    |> Array.sort

// The command line sets libtorch's thread count (process-wide): one at a time.
[<Tests>]
let cliTests =
    testSequenced
    <| testList
        "Bad input: command line"
        [ test "unwritable outputs fail before the work and leave nothing behind" {
              use temp = tempDir "cliout"
              let dir = temp.Path
              // a path under an existing file cannot be written, even by root
              let file = IO.Path.Combine(dir, "a-file")
              IO.File.WriteAllText(file, "x")
              let model = IO.Path.Combine(dir, "model")
              let before = entries dir
              let watch = Diagnostics.Stopwatch.StartNew()
              // 100,000 training steps would take minutes: the check comes first
              CliTests.cliFails
                  [ "train"
                    "--dataset"
                    "ring"
                    "--steps"
                    "100000"
                    "--out"
                    model
                    "--plot"
                    IO.Path.Combine(file, "loss.png") ]
                  "--plot: cannot write"
              CliTests.cliFails
                  [ "train"; "--dataset"; "ring"; "--steps"; "100000"; "--out"; IO.Path.Combine(file, "model") ]
                  "--out: cannot write"
              Expect.isLessThan watch.Elapsed.TotalSeconds 30.0 "failed before training"
              Expect.sequenceEqual (entries dir) before "train: no model directory, nothing half-written"
              CliTests.cliOk [ "train"; "--dataset"; "ring"; "--steps"; "5"; "--points"; "100"; "--out"; model; "--quiet" ]
              |> ignore
              let before = entries dir
              CliTests.cliFails
                  [ "sample"; "--model"; model; "--n"; "100000000"; "--out"; IO.Path.Combine(file, "s.csv") ]
                  "--out: cannot write"
              let data = IO.Path.Combine(dir, "data.csv")
              IO.File.WriteAllText(data, "0.1,0.2\n0.3,0.4\n")
              let before = entries dir
              CliTests.cliFails
                  [ "likelihood"; "--model"; model; "--data"; data; "--out"; IO.Path.Combine(file, "l.csv") ]
                  "--out: cannot write"
              CliTests.cliFails [ "demo"; "--train-steps"; "100000"; "--out"; file ] "--out: cannot write"
              Expect.sequenceEqual (entries dir) before "sample, likelihood, demo: nothing written"
              // success writes the file under its name and leaves no temporary file
              let csv = IO.Path.Combine(dir, "s.csv")
              CliTests.cliOk [ "sample"; "--model"; model; "--n"; "10"; "--steps"; "5"; "--out"; csv; "--quiet" ]
              |> ignore
              Expect.sequenceEqual (entries dir) (Array.sort (Array.append before [| "s.csv" |])) "only the output is new"
          }

          test "a failed write leaves the previous file intact and no temporary file" {
              use temp = tempDir "cliatomic"
              let target = IO.Path.Combine(temp.Path, "out.csv")
              IO.File.WriteAllText(target, "previous")
              let e =
                  throwsOf<InvalidOperationException> "failing writer" (fun () ->
                      ScoreSde.Cli.Outputs.writeFile target (fun temporary ->
                          IO.File.WriteAllText(temporary, "half")
                          raise (InvalidOperationException "disk full")))
              Expect.equal e.Message "disk full" "the writer's error"
              Expect.equal (IO.File.ReadAllText target) "previous" "target untouched"
              Expect.sequenceEqual (entries temp.Path) [| "out.csv" |] "no temporary file left"
          }

          test "usage errors: unknown extensions (exit 2), types in words, options the sampler ignores" {
              let usage (args: string list) (fragment: string) =
                  let code, _, err = CliTests.cli args
                  Expect.equal code 2 (sprintf "%A: usage error" args)
                  Expect.stringContains err fragment (sprintf "%A: message" args)
                  Expect.isFalse (err.Contains "System.") (sprintf "%A: no .NET type names" args)
              usage [ "sample"; "--model"; "m"; "--out"; "x.txt" ] "--out must end in .csv, .npy, .png (got 'x.txt')"
              usage [ "likelihood"; "--model"; "m"; "--data"; "d.csv"; "--out"; "x.png" ] "--out must end in .csv, .npy"
              usage [ "train"; "--dataset"; "ring"; "--out"; "m"; "--plot"; "loss.jpg" ] "--plot must end in .png"
              usage [ "sample"; "--model"; "m"; "--out"; "x.csv"; "--label"; "abc" ] "'abc' for option '--label' as expected: an integer"
              usage [ "sample"; "--model"; "m"; "--out"; "x.csv"; "--steps"; "1.5" ] "as expected: an integer"
              usage [ "sample"; "--model"; "m"; "--out"; "x.csv"; "--eps"; "abc" ] "as expected: a number"
              use temp = tempDir "cliignored"
              let model = IO.Path.Combine(temp.Path, "model")
              CliTests.cliOk [ "train"; "--dataset"; "ring"; "--steps"; "5"; "--points"; "100"; "--out"; model; "--quiet" ]
              |> ignore
              let csv = IO.Path.Combine(temp.Path, "s.csv")
              for args, option, other in
                  [ [ "--sampler"; "pc"; "--order"; "2" ], "--order", "dpm"
                    [ "--sampler"; "pc"; "--solver"; "rk4" ], "--solver", "ode"
                    [ "--sampler"; "ode"; "--snr"; "0.2" ], "--snr", "pc"
                    [ "--sampler"; "dpm"; "--predictor"; "ancestral" ], "--predictor", "pc" ] do
                  CliTests.cliFails
                      ([ "sample"; "--model"; model; "--out"; csv ] @ args)
                      (sprintf "%s applies to --sampler %s" option other)
              Expect.isFalse (IO.File.Exists csv) "nothing written"
          }

          test "a model that outputs NaN: the error names the step and the time and blames the model" {
              use temp = tempDir "clinan"
              let csv = IO.Path.Combine(temp.Path, "s.csv")
              // a network whose weights are NaN, saved in the library's format
              let model = IO.Path.Combine(temp.Path, "nan-model")
              let writeNanModel () =
                  use g = generator 1L
                  use net = new ScoreNet(ScoreNet.defaultConfig 2, g)
                  use _noGrad = torch.no_grad ()
                  for p in net.parameters () do
                      p.fill_ (sc nan) |> ignore
                  ModelFile.save model net Sde.standardVp None (Text.Json.Nodes.JsonObject())
              writeNanModel ()
              let args = [ "sample"; "--model"; model; "--n"; "4"; "--steps"; "5"; "--out"; csv ]
              let code, _, err = CliTests.cli (args @ [ "--sampler"; "pc" ])
              Expect.equal code 1 "exit 1"
              Expect.stringContains err "The model produced a non-finite output" "blames the model"
              Expect.stringContains err "at step 0 (t = 1)" "step and time"
              Expect.isFalse (err.Contains "more steps") "no step advice"
              Expect.isFalse (IO.File.Exists csv) "nothing written"
              // unchecked: the samples are refused at the end, with advice to turn the check back on
              let code, _, err = CliTests.cli (args @ [ "--check-finite"; "false" ])
              Expect.equal code 1 "exit 1 unchecked"
              Expect.stringContains err "--check-finite" "advice"
              Expect.isFalse (IO.File.Exists csv) "nothing written unchecked"
          } ]
