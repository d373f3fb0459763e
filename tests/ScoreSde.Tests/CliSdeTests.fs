module ScoreSde.Tests.CliSdeTests

open System
open System.IO
open Expecto
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.CliTests

let private rows (path: string) = File.ReadAllLines path |> Array.filter (fun l -> l.Trim() <> "")

// The command line sets libtorch's thread count (a process-wide setting): these run one at a time, after
// the parallel tests, like the other command-line tests.
[<Tests>]
let tests =
    testSequenced
    <| testList
        "Command line SDEs"
        [ test "--sde: train stores the SDE in the model file, sample and likelihood use it, a different --sde is refused" {
              use temp = tempDir "clisde"
              let dir = temp.Path
              for name, described in [ "ve", "VE-SDE, sigma 0.01..50"; "subvp", "sub-VP SDE, beta 0.1..20" ] do
                  let model = Path.Combine(dir, "model-" + name)
                  let out =
                      cliOk
                          [ "train"
                            "--dataset"
                            "ring"
                            "--sde"
                            name
                            "--steps"
                            "40"
                            "--points"
                            "500"
                            "--batch-size"
                            "64"
                            "--out"
                            model ]
                  Expect.stringContains out described "training log names the SDE"
                  use loaded = ModelFile.loadNative model
                  Expect.equal (Sde.name loaded.Info.Sde) name "stored in config.json"
                  for sampler in
                      [ [ "pc"; "--steps"; "8" ]
                        [ "ode" ]
                        [ "ode"; "--solver"; "rk4"; "--steps"; "8" ]
                        [ "dpm"; "--steps"; "8" ] ] do
                      let label = String.Join("-", sampler)
                      let csv = Path.Combine(dir, sprintf "%s-%s.csv" name label)
                      cliOk ([ "sample"; "--model"; model; "--n"; "20"; "--out"; csv; "--quiet"; "--sampler" ] @ sampler)
                      |> ignore
                      Expect.equal (rows csv).Length 20 (sprintf "%s %s: 20 samples" name label)
                  let data = Path.Combine(dir, "points.csv")
                  File.WriteAllLines(data, [| "0.9,0.1"; "-0.2,0.8"; "0.0,-1.0" |])
                  let lik = cliOk [ "likelihood"; "--model"; model; "--data"; data; "--quiet" ]
                  Expect.stringContains lik "bits/dim" (sprintf "%s: likelihood" name)
                  cliFails
                      [ "sample"; "--model"; model; "--sde"; "vp"; "--n"; "5"; "--out"; Path.Combine(dir, "x.csv") ]
                      "does not match the SDE the model"
              cliFails [ "train"; "--dataset"; "ring"; "--sde"; "cld"; "--out"; Path.Combine(dir, "m") ] "--sde"
          }

          test "demo with --sde subvp runs every sampler on the sub-VP SDE" {
              use temp = tempDir "demosub"
              let dir = temp.Path
              let out = cliOk [ "demo"; "--sde"; "subvp"; "--train-steps"; "30"; "--n"; "300"; "--out"; dir; "--quiet" ]
              for e in ScoreSde.Cli.Samplers.all do
                  Expect.stringContains out e.Demo.Label (sprintf "table row for %s" e.Name)
              use loaded = ModelFile.loadNative (Path.Combine(dir, "model"))
              Expect.equal loaded.Info.Sde Sde.standardSubVp "the demo's model file"
          } ]
