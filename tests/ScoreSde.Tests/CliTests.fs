module ScoreSde.Tests.CliTests

open System
open System.IO
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DataFileTests
open ScoreSde.Tests.ModelFileTests

/// Run the command line in-process; returns exit code, stdout and stderr.
let cli (args: string list) =
    use out = new StringWriter()
    use err = new StringWriter()
    let code = ScoreSde.Cli.Program.run out err (List.toArray args)
    code, out.ToString(), err.ToString()

/// Run and require success.
let cliOk (args: string list) =
    let code, out, err = cli args
    if code <> 0 then
        failtestf "scoresde %s exited with %d:\n%s\n%s" (String.Join(" ", args)) code out err
    out

/// Run and require failure with exactly one line on stderr, "error: ..." containing `fragment`.
let cliFails (args: string list) (fragment: string) =
    let code, out, err = cli args
    let what = sprintf "scoresde %s" (String.Join(" ", args))
    Expect.notEqual code 0 (sprintf "%s: non-zero exit code" what)
    let lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries)
    Expect.equal lines.Length 1 (sprintf "%s: one line on stderr, got:\n%s" what err)
    Expect.stringStarts lines.[0] "error: " (sprintf "%s: error prefix" what)
    Expect.stringContains lines.[0] fragment (sprintf "%s: message" what)
    Expect.isFalse (err.Contains "   at " || out.Contains "   at ") (sprintf "%s: no stack trace" what)

/// What `--sampler pc --steps n` runs, written out here: reverse diffusion + Langevin (snr 0.16, one
/// step, batch-averaged norms), n uniform steps to 1e-3.
let cliPc (steps: int) =
    { Sampling.pc with
        Method =
            Method.PredictorCorrector(
                Predictor.ReverseDiffusion,
                Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean }
            )
        Schedule = Schedule.uniform steps 1e-3 }

let private rows (path: string) = File.ReadAllLines path |> Array.filter (fun l -> l.Trim() <> "")

// The command line sets libtorch's thread count (a process-wide setting): run these tests one at a
// time, after the parallel ones.
[<Tests>]
let tests =
    testSequenced
    <| testList
        "Command line"
        [ test "train then sample to .csv, .npy and .png" {
              use temp = tempDir "cli"
              let dir = temp.Path
              let model = Path.Combine(dir, "model")
              let out =
                  cliOk
                      [ "train"
                        "--dataset"
                        "moons"
                        "--steps"
                        "60"
                        "--points"
                        "500"
                        "--batch-size"
                        "64"
                        "--out"
                        model
                        "--plot"
                        Path.Combine(dir, "loss.png")
                        "--quiet" ]
              Expect.stringContains out "model saved to" "summary line"
              for f in [ "config.json"; "weights.bin" ] do
                  Expect.isTrue (File.Exists(Path.Combine(model, f))) f
              Expect.isTrue (File.Exists(Path.Combine(dir, "loss.png"))) "loss plot"
              let csv = Path.Combine(dir, "s.csv")
              cliOk
                  [ "sample"
                    "--model"
                    model
                    "--sampler"
                    "ode"
                    "--solver"
                    "rk4"
                    "--steps"
                    "5"
                    "--n"
                    "37"
                    "--out"
                    csv
                    "--quiet" ]
              |> ignore
              Expect.equal (rows csv).Length 37 "37 rows"
              Expect.isTrue (rows csv |> Array.forall (fun l -> l.Split(',').Length = 2)) "2 columns"
              let npy = Path.Combine(dir, "s.npy")
              cliOk [ "sample"; "--model"; model; "--steps"; "5"; "--n"; "11"; "--out"; npy; "--seed"; "3" ]
              |> ignore
              let a = Npy.read npy
              Expect.equal a.Shape [| 11L; 2L |] "npy shape"
              Expect.equal a.Dtype torch.float32 "npy dtype"
              let png = Path.Combine(dir, "s.png")
              cliOk
                  [ "sample"
                    "--model"
                    model
                    "--sampler"
                    "pc"
                    "--steps"
                    "5"
                    "--corrector"
                    "none"
                    "--n"
                    "50"
                    "--out"
                    png ]
              |> ignore
              let bytes = File.ReadAllBytes png
              Expect.sequenceEqual bytes.[..7] [| 0x89uy; byte 'P'; byte 'N'; byte 'G'; 13uy; 10uy; 26uy; 10uy |] "PNG signature"
          }

          test "same seed, same samples; another seed, other samples" {
              use temp = tempDir "cliseed"
              let dir = temp.Path
              let model = Path.Combine(dir, "model")
              cliOk
                  [ "train"
                    "--dataset"
                    "ring"
                    "--steps"
                    "20"
                    "--points"
                    "200"
                    "--batch-size"
                    "32"
                    "--out"
                    model
                    "--quiet" ]
              |> ignore
              let sample seed name =
                  let p = Path.Combine(dir, name)
                  cliOk [ "sample"; "--model"; model; "--steps"; "4"; "--n"; "20"; "--seed"; seed; "--out"; p; "--quiet" ]
                  |> ignore
                  File.ReadAllText p
              Expect.equal (sample "5" "a.csv") (sample "5" "b.csv") "same seed"
              Expect.notEqual (sample "5" "a.csv") (sample "6" "c.csv") "another seed"
          }

          test "user data from CSV are standardised for training and samples come back in data units" {
              use temp = tempDir "clidata"
              let dir = temp.Path
              // N((10, -5), diag(2^2, 0.5^2)): far from the prior's scale
              use g = generator 80L
              use z = torch.randn ([| 400L; 2L |], dtype = torch.float64, generator = g)
              use data =
                  z * torch.tensor ([| 2.0; 0.5 |], dtype = torch.float64)
                  + torch.tensor ([| 10.0; -5.0 |], dtype = torch.float64)
              let csv = Path.Combine(dir, "data.csv")
              DataFile.save csv data
              let model = Path.Combine(dir, "model")
              cliOk [ "train"; "--data"; csv; "--steps"; "150"; "--batch-size"; "128"; "--out"; model; "--quiet" ]
              |> ignore
              let _, info, _ = ModelFile.readConfig model
              Expect.isSome info.Standardisation "a data file is standardised"
              let out = Path.Combine(dir, "s.csv")
              cliOk
                  [ "sample"
                    "--model"
                    model
                    "--sampler"
                    "ode"
                    "--solver"
                    "heun"
                    "--steps"
                    "20"
                    "--n"
                    "400"
                    "--out"
                    out
                    "--quiet" ]
              |> ignore
              use s = DataFile.load out torch.float64
              let m, sd = moments s
              // Even a briefly trained model samples roughly N(0, 1) in the standardised space, so in
              // data units the samples sit at the data's location and scale (to within half a scale);
              // without the inverse map they would sit at 0 with std ~1.
              close 1.0 m.[0] 10.0 "mean x in data units"
              close 0.25 m.[1] -5.0 "mean y in data units"
              Expect.isTrue (sd.[0] > 1.0 && sd.[0] < 3.0) (sprintf "std x %g near 2" sd.[0])
              Expect.isTrue (sd.[1] > 0.25 && sd.[1] < 0.75) (sprintf "std y %g near 0.5" sd.[1])
          }

          test "demo on a tiny budget writes every figure, the model and the table" {
              use temp = tempDir "demo"
              let dir = temp.Path
              let out = cliOk [ "demo"; "--train-steps"; "30"; "--n"; "300"; "--out"; dir; "--quiet" ]
              let expected =
                  [ "data.png"
                    "trajectories.png"
                    "loss.png"
                    "overview.png"
                    yield! ScoreSde.Cli.Samplers.all |> List.map (fun e -> sprintf "samples-%s.png" e.Name) ]
              for f in expected do
                  Expect.isTrue (File.Exists(Path.Combine(dir, f))) (sprintf "%s written" f)
              Expect.isTrue (File.Exists(Path.Combine(dir, "model", "config.json"))) "model written"
              for e in ScoreSde.Cli.Samplers.all do
                  Expect.stringContains out e.Demo.Label (sprintf "table row for %s" e.Name)
              for word in [ "sliced W1"; "reference: prior"; "steps/s"; "demo finished in" ] do
                  Expect.stringContains out word "table contents"
          }

          test "the TorchScript fixture samples its Gaussian through the command line with every sampler" {
              use temp = tempDir "clits"
              let dir = temp.Path
              // each sampler's default settings, which are the library's (F#, C# and the CLI agree); the
              // log names what ran
              for sampler, logged, ext in
                  [ "pc", sprintf "PC: reverse diffusion + Langevin, %d steps" Sampling.pc.Schedule.Steps, ".csv"
                    "ode", "Dopri5", ".npy"
                    "dpm", "20 model evaluations", ".npy" ] do
                  let out = Path.Combine(dir, "g-" + sampler + ext)
                  let log =
                      cliOk
                          [ "sample"
                            "--model"
                            fixture "gaussian_eps_t999.pt"
                            "--time-scale"
                            "999"
                            "--sampler"
                            sampler
                            "--n"
                            "4000"
                            "--out"
                            out ]
                  Expect.stringContains log logged (sprintf "%s: what ran" sampler)
                  use s = DataFile.load out torch.float64
                  expectFixtureGaussian s (sprintf "scoresde sample --sampler %s (seed 0)" sampler)
          }

          test "the DPM sampler's lower-order rule and third-order update are options" {
              use temp = tempDir "clidpm"
              let dir = temp.Path
              for extra in
                  [ [ "--lower-order-final"; "never"; "--third-order"; "taylor-exact" ]
                    [ "--lower-order-final"; "below15"; "--algorithm"; "dpm-solver++" ] ] do
                  let out = Path.Combine(dir, "g.npy")
                  cliOk (
                      [ "sample"
                        "--model"
                        fixture "gaussian_eps_t999.pt"
                        "--time-scale"
                        "999"
                        "--sampler"
                        "dpm"
                        "--steps"
                        "20"
                        "--n"
                        "4000"
                        "--out"
                        out ]
                      @ extra
                  )
                  |> ignore
                  use s = DataFile.load out torch.float64
                  expectFixtureGaussian s (sprintf "scoresde sample --sampler dpm %A (seed 0)" extra)
              cliFails
                  [ "sample"
                    "--model"
                    fixture "gaussian_eps_t999.pt"
                    "--sampler"
                    "dpm"
                    "--lower-order-final"
                    "sometimes"
                    "--out"
                    Path.Combine(dir, "x.csv") ]
                  "--lower-order-final"
          }

          test "likelihood of the TorchScript Gaussian matches its closed-form density" {
              use temp = tempDir "clilik"
              let dir = temp.Path
              // 300 points of the fixture's Gaussian, written as .npy
              use g = generator 90L
              use z = torch.randn ([| 300L; 2L |], dtype = torch.float64, generator = g)
              use x =
                  z * torch.tensor (fixtureGaussian.S, dtype = torch.float64)
                  + torch.tensor (fixtureGaussian.Mu, dtype = torch.float64)
              let data = Path.Combine(dir, "x.npy")
              DataFile.save data x
              let perPoint = Path.Combine(dir, "lik.csv")
              let out =
                  cliOk
                      [ "likelihood"
                        "--model"
                        fixture "gaussian_eps_t999.pt"
                        "--time-scale"
                        "999"
                        "--data"
                        data
                        "--out"
                        perPoint
                        "--batch-size"
                        "128"
                        "--quiet" ]
              Expect.stringContains out "bits/dim" "summary line"
              let table = Csv.read perPoint
              Expect.equal table.Shape [| 300L; 2L |] "one row per point"
              // For Gaussian data the probability-flow map from eps to T is affine per coordinate:
              // x_T = m_T + (sd_T / sd_eps) (x - m_eps), with m_t = alpha_t mu and
              // sd_t^2 = alpha_t^2 s^2 + 1 - alpha_t^2. The method reports log N(x_T; 0, I) + log |dx_T/dx|
              // (the prior stands in for p_T, which differs from N(0, I) by alpha_1 ~ 0.007): computed
              // here by hand in float64. The model runs in float32 and Dopri5 at rtol = atol = 1e-5 on a
              // state of size ~10: 5e-4 nats leaves room for both (observed errors ~1e-5).
              let alpha t = exp (-0.25 * t * t * 19.9 - 0.05 * t)
              let moments t d =
                  let a = alpha t
                  a * fixtureGaussian.Mu.[d], sqrt (a * a * fixtureGaussian.S.[d] ** 2.0 + 1.0 - a * a)
              let xs = values x
              for i in 0..299 do
                  let expected =
                      Array.init 2 (fun d ->
                          let mEps, sdEps = moments 1e-5 d
                          let mT, sdT = moments 1.0 d
                          let xT = mT + sdT / sdEps * (xs.[2 * i + d] - mEps)
                          -0.5 * log (2.0 * Math.PI) - 0.5 * xT * xT + log (sdT / sdEps))
                      |> Array.sum
                  close 5e-4 table.Values.[2 * i] expected (sprintf "log p of point %d (seed 90)" i)
                  close 1e-9 table.Values.[2 * i + 1] (-table.Values.[2 * i] / (2.0 * log 2.0)) "bits/dim = -log p / (D ln 2)"
          }

          test "bad input: one line on stderr, non-zero exit, no stack trace" {
              use temp = tempDir "clibad"
              let dir = temp.Path
              let model = Path.Combine(dir, "model")
              cliOk
                  [ "train"
                    "--dataset"
                    "ring"
                    "--steps"
                    "5"
                    "--points"
                    "100"
                    "--batch-size"
                    "16"
                    "--out"
                    model
                    "--quiet" ]
              |> ignore
              let csv = Path.Combine(dir, "x.csv")
              cliFails [ "train"; "--data"; Path.Combine(dir, "absent.csv"); "--out"; model ] "absent.csv: no such file"
              cliFails [ "train"; "--data"; fixture "three_d.npy"; "--out"; model ] "expected a 2-D array"
              cliFails [ "train"; "--dataset"; "ring"; "--steps"; "0"; "--out"; model ] "--steps must be at least 1 (got 0)"
              cliFails [ "train"; "--dataset"; "ring"; "--steps"; "-3"; "--out"; model ] "--steps must be at least 1 (got -3)"
              cliFails [ "train"; "--dataset"; "spiral"; "--out"; model ] "--dataset must be one of"
              cliFails [ "train"; "--out"; model ] "give --dataset"
              cliFails [ "sample"; "--model"; model; "--sampler"; "magic"; "--out"; csv ] "--sampler must be one of"
              cliFails [ "sample"; "--model"; model; "--steps"; "0"; "--out"; csv ] "--steps must be at least 1 (got 0)"
              cliFails [ "sample"; "--model"; model; "--n"; "0"; "--out"; csv ] "--n must be at least 1"
              cliFails [ "sample"; "--model"; Path.Combine(dir, "nothing"); "--out"; csv ] "no such model directory or TorchScript file"
              cliFails [ "sample"; "--model"; model; "--out"; Path.Combine(dir, "x.txt") ] "--out must end in .csv, .npy, .png"
              cliFails [ "sample"; "--model"; fixture "one_input.pt"; "--out"; csv ] "cannot be called as forward(x, t)"
              cliFails [ "sample"; "--model"; fixture "wrong_shape.pt"; "--out"; csv ] "must return a tensor shaped like x"
              cliFails
                  [ "sample"; "--model"; fixture "gaussian_eps_t999.pt"; "--shape"; "3,x"; "--out"; csv ]
                  "--shape must be positive integers"
              cliFails [ "sample"; "--model"; model; "--steps"; "abc"; "--out"; csv ] "abc"
              cliFails [ "sample"; "--out"; csv ] "--model"
              cliFails
                  [ "sample"; "--model"; model; "--sampler"; "ode"; "--steps"; "10"; "--out"; csv ]
                  "--steps does not apply to --solver dopri5"
              cliFails
                  [ "sample"
                    "--model"
                    model
                    "--sampler"
                    "dpm"
                    "--method"
                    "adaptive"
                    "--steps"
                    "4"
                    "--out"
                    csv ]
                  "--steps does not apply to --method adaptive"
              cliFails
                  [ "sample"; "--model"; model; "--sampler"; "pc"; "--rtol"; "0.1"; "--out"; csv ]
                  "--rtol and --atol apply to adaptive solvers"
              cliFails
                  [ "sample"
                    "--model"
                    model
                    "--sampler"
                    "dpm"
                    "--method"
                    "adaptive"
                    "--order"
                    "1"
                    "--out"
                    csv ]
                  "order must be 2 or 3"
              cliFails [ "likelihood"; "--model"; model; "--data"; fixture "three_d.npy" ] "expected a 2-D array"
              let wide = Path.Combine(dir, "wide.csv")
              File.WriteAllText(wide, "1,2,3\n4,5,6\n")
              cliFails [ "likelihood"; "--model"; model; "--data"; wide ] "holds 3 coordinates per point"
              cliFails [ "likelihood"; "--model"; model; "--data"; wide; "--hutchinson"; "0" ] "--hutchinson must be at least 1"
              cliFails [ "frobnicate" ] "frobnicate"
          } ]
