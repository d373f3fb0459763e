/// `scoresde sample` with known values (--inpaint, --mask, --basis, --replacement) and class guidance
/// (--label, --guidance, --classes) on the TorchScript fixtures.
module ScoreSde.Tests.ConditionCliTests

open System
open System.IO
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DataFileTests
open ScoreSde.Tests.ModelFileTests
open ScoreSde.Tests.CliTests

/// The class-conditional fixture's classes (fixtures/make_conditional_fixture.py).
let private classMu = [| [| 2.0; 0.0 |]; [| -1.0; 1.5 |]; [| -1.0; -1.5 |] |]
let private classS = [| 0.3; 0.5; 0.2 |]

let private writeNpy (path: string) (t: Tensor) = DataFile.save path t

// The command line sets libtorch's thread count (process-wide): one at a time.
[<Tests>]
let tests =
    testSequenced
    <| testList
        "Command line: conditions and guidance"
        [ test "--inpaint and --mask: the known coordinate is kept, the other follows its law (the fixture's coordinates are independent)" {
              use temp = tempDir "cli-inpaint"
              let dir = temp.Path
              let mask = Path.Combine(dir, "mask.npy")
              writeNpy mask (torch.tensor ([| 1.0; 0.0 |]))
              // one sample's values for every sample, and one per sample
              let one = Path.Combine(dir, "one.npy")
              writeNpy one (torch.tensor ([| 0.7; 0.0 |]))
              let per = Path.Combine(dir, "per.csv")
              writeNpy per (torch.linspace(-1.0, 1.0, 3000).reshape([| 3000L; 1L |]).expand([| 3000L; 2L |]).contiguous())
              for knownFile, sampler in [ one, "pc"; per, "dpm"; one, "ode" ] do
                  let out = Path.Combine(dir, sprintf "s-%s.npy" sampler)
                  cliOk
                      [ "sample"
                        "--model"
                        fixture "gaussian_eps_t999.pt"
                        "--time-scale"
                        "999"
                        "--sampler"
                        sampler
                        "--n"
                        "3000"
                        "--inpaint"
                        knownFile
                        "--mask"
                        mask
                        "--out"
                        out ]
                  |> ignore
                  use s = DataFile.load out torch.float64
                  use known = DataFile.load knownFile torch.float64
                  let vs, vk = values s, values known
                  for i in 0..2999 do
                      let expected = if vk.Length = 2 then vk.[0] else vk.[2 * i]
                      close 1e-6 vs.[2 * i] expected (sprintf "%s: known coordinate of sample %d" sampler i)
                  // the unknown coordinate: N(-0.5, 0.25^2) whatever the known one (5 SE plus 1%)
                  let u = Array.init 3000 (fun i -> vs.[2 * i + 1])
                  let m = Array.average u
                  let sd = sqrt (Array.averageBy (fun v -> (v - m) ** 2.0) u)
                  close (5.0 * 0.25 / sqrt 3000.0 + 0.0025) m -0.5 (sprintf "%s: mean of the unknown coordinate (seed 0)" sampler)
                  close (5.0 * 0.25 / sqrt 6000.0 + 0.0025) sd 0.25 (sprintf "%s: std of the unknown coordinate (seed 0)" sampler)
          }

          test "--label with --classes samples the class; --guidance is the core's classifier-free guidance, to the bit" {
              use temp = tempDir "cli-guidance"
              let dir = temp.Path
              let model = fixture "class_gaussians.pt"
              for k in 0..2 do
                  let out = Path.Combine(dir, sprintf "class%d.npy" k)
                  cliOk
                      [ "sample"
                        "--model"
                        model
                        "--classes"
                        "3"
                        "--label"
                        string k
                        "--sampler"
                        "dpm"
                        "--n"
                        "3000"
                        "--out"
                        out ]
                  |> ignore
                  use s = DataFile.load out torch.float64
                  let ms, ss = moments s
                  for d in 0..1 do
                      close
                          (5.0 * classS.[k] / sqrt 3000.0 + 0.01 * classS.[k])
                          ms.[d]
                          classMu.[k].[d]
                          (sprintf "class %d: mean %d (seed 0)" k d)
                      close (5.0 * classS.[k] / sqrt 6000.0 + 0.01 * classS.[k]) ss.[d] classS.[k] (sprintf "class %d: std %d (seed 0)" k d)
              // guided: the command line's samples are the core's with the same seeds (prior: seed, steps: seed + 1)
              let out = Path.Combine(dir, "guided.npy")
              cliOk
                  [ "sample"
                    "--model"
                    model
                    "--classes"
                    "3"
                    "--label"
                    "1"
                    "--guidance"
                    "2.5"
                    "--sampler"
                    "pc"
                    "--steps"
                    "40"
                    "--n"
                    "50"
                    "--seed"
                    "9"
                    "--out"
                    out ]
              |> ignore
              use s = DataFile.load out torch.float32
              let cm, owner = ScoreSde.Cli.Conditioning.loadConditionalTorchScript model 1.0 ModelOutput.Noise 3
              use _owner = owner
              use labels = torch.full ([| 50L |], Scalar.op_Implicit 1L, dtype = torch.int64)
              let guided = Guidance.classifierFree cm labels 2.5
              use xT = Sampler.prior Sde.standardVp [| 50L; 2L |] torch.float32 torch.CPU (Noise.fromSeed 9L torch.CPU)
              let r = Sampler.sample Sde.standardVp guided (cliPc 40) (Noise.fromSeed 10L torch.CPU) xT
              use expected = r.Samples
              Expect.equal (values s) (values expected) "the core's guided samples"
          }

          test "--thresholding reaches DPM-Solver++ (the core's samples to the bit); refused with DPM-Solver" {
              use temp = tempDir "cli-threshold"
              let out = Path.Combine(temp.Path, "s.npy")
              let log =
                  cliOk
                      [ "sample"
                        "--model"
                        fixture "gaussian_eps_t999.pt"
                        "--time-scale"
                        "999"
                        "--sampler"
                        "dpm"
                        "--algorithm"
                        "dpm-solver++"
                        "--order"
                        "2"
                        "--thresholding"
                        "dynamic"
                        "--threshold-quantile"
                        "0.9"
                        "--threshold-max"
                        "0.8"
                        "--n"
                        "64"
                        "--seed"
                        "3"
                        "--out"
                        out ]
              Expect.stringContains log "dynamic thresholding (quantile 0.9, max 0.8)" "what ran"
              use s = DataFile.load out torch.float32
              let model = ModelFile.loadTorchScript (fixture "gaussian_eps_t999.pt") (torchScriptOptions 999.0)
              use _model = model
              use xT = Sampler.prior Sde.standardVp [| 64L; 2L |] torch.float32 torch.CPU (Noise.fromSeed 3L torch.CPU)
              let settings =
                  { DpmSolver.defaults with
                      Algorithm = DpmAlgorithm.DpmSolverPlusPlus
                      Order = 2
                      Thresholding = Thresholding.Dynamic(0.9, 0.8) }
              let r =
                  Sampler.sample
                      Sde.standardVp
                      model.Model
                      { Sampling.dpmSolver with Method = Method.DpmSolver settings }
                      (Noise.fromSeed 4L torch.CPU)
                      xT
              use expected = r.Samples
              Expect.equal (values s) (values expected) "the core's samples"
              cliFails
                  [ "sample"
                    "--model"
                    fixture "gaussian_eps_t999.pt"
                    "--sampler"
                    "dpm"
                    "--thresholding"
                    "static"
                    "--out"
                    out ]
                  "--thresholding applies to DPM-Solver++"
          }

          test "--basis: coordinates in an orthonormal basis are kept" {
              use temp = tempDir "cli-basis"
              let dir = temp.Path
              let c, sn = Math.Cos 0.6, Math.Sin 0.6
              let basis = Path.Combine(dir, "basis.npy")
              writeNpy basis (torch.tensor([| c; -sn; sn; c |], dtype = torch.float64).reshape([| 2L; 2L |]))
              let valuesFile = Path.Combine(dir, "values.npy")
              writeNpy valuesFile (torch.tensor ([| 0.4; 0.0 |]))
              let mask = Path.Combine(dir, "mask.npy")
              writeNpy mask (torch.tensor ([| 1.0; 0.0 |]))
              let out = Path.Combine(dir, "s.npy")
              cliOk
                  [ "sample"
                    "--model"
                    fixture "gaussian_eps_t999.pt"
                    "--time-scale"
                    "999"
                    "--sampler"
                    "dpm"
                    "--n"
                    "200"
                    "--inpaint"
                    valuesFile
                    "--mask"
                    mask
                    "--basis"
                    basis
                    "--out"
                    out ]
              |> ignore
              use s = DataFile.load out torch.float64
              let v = values s
              for i in 0..199 do
                  close 1e-5 (c * v.[2 * i] - sn * v.[2 * i + 1]) 0.4 (sprintf "first coordinate in the basis, sample %d" i)
          }

          test "bad conditions and guidance: one line on stderr naming the option" {
              use temp = tempDir "cli-condition-bad"
              let dir = temp.Path
              let gaussian = fixture "gaussian_eps_t999.pt"
              let mask = Path.Combine(dir, "mask.npy")
              writeNpy mask (torch.tensor ([| 1.0; 0.0 |]))
              let three = Path.Combine(dir, "three.npy")
              writeNpy three (torch.zeros ([| 3L |]))
              let notOrthonormal = Path.Combine(dir, "basis.npy")
              writeNpy notOrthonormal (torch.ones ([| 2L; 2L |]))
              let out = Path.Combine(dir, "s.npy")
              let sample (args: string list) = [ "sample"; "--model"; gaussian; "--time-scale"; "999"; "--n"; "10"; "--out"; out ] @ args
              cliFails (sample [ "--mask"; mask ]) "--mask needs --inpaint"
              cliFails (sample [ "--inpaint"; mask ]) "--inpaint needs --mask"
              cliFails (sample [ "--inpaint"; three; "--mask"; mask ]) "--inpaint holds an array of shape [3]"
              cliFails (sample [ "--inpaint"; mask; "--mask"; three ]) "--mask holds an array of shape [3]"
              cliFails (sample [ "--inpaint"; mask; "--mask"; mask; "--basis"; notOrthonormal ]) "--basis"
              cliFails (sample [ "--inpaint"; mask; "--mask"; mask; "--sampler"; "ode"; "--replacement"; "fresh" ]) "--replacement"
              cliFails (sample [ "--label"; "1" ]) "--label and --guidance need a class-conditional model"
              cliFails (sample [ "--guidance"; "-1" ]) "--guidance must be a number, zero or more"
              let classes = fixture "class_gaussians.pt"
              let conditional (args: string list) = [ "sample"; "--model"; classes; "--classes"; "3"; "--n"; "10"; "--out"; out ] @ args
              cliFails (conditional [ "--label"; "3" ]) "--label must be in 0 .. 2"
              cliFails (conditional [ "--guidance"; "2" ]) "need --label"
              Expect.isFalse (File.Exists out) "no output file written"
          } ]
