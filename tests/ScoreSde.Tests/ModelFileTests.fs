module ScoreSde.Tests.ModelFileTests

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DataFileTests

let private sde = Sde.standardVp
let fixture (name: string) = Path.Combine(AppContext.BaseDirectory, "fixtures", name)

/// The Gaussian the TorchScript fixture was written for (see fixtures/make_torchscript_fixtures.py).
let fixtureGaussian = { Mu = [| 1.0; -0.5 |]; S = [| 0.5; 0.25 |] }

/// Check that n samples [n, 2] follow the fixture's Gaussian: the SE of a mean is s / sqrt n and of
/// a std s / sqrt (2 n); allow 5 SE plus 1% for the sampler's own bias at eps = 1e-3 (alpha_eps ~ 1,
/// sigma_eps ~ 0.01, so the sampled std is off by well below 1%).
let expectFixtureGaussian (x: Tensor) (what: string) =
    let n = float x.shape.[0]
    let ms, ss = moments x
    for d in 0..1 do
        let s = fixtureGaussian.S.[d]
        close (5.0 * s / sqrt n + 0.01 * s) ms.[d] fixtureGaussian.Mu.[d] (sprintf "%s: mean %d" what d)
        close (5.0 * s / sqrt (2.0 * n) + 0.01 * s) ss.[d] s (sprintf "%s: std %d" what d)

let torchScriptOptions timeScale = { Sde = sde; TimeScale = timeScale; Output = ModelOutput.Noise; SampleShape = [| 2L |] }

let private expectModelError (what: string) (fragment: string) (f: unit -> 'a) =
    try
        f () |> ignore
        failtestf "%s: expected an ArgumentException" what
    with :? ArgumentException as e ->
        Expect.equal e.ParamName "model" (sprintf "%s: parameter name" what)
        Expect.stringContains e.Message fragment (sprintf "%s: message" what)

[<Tests>]
let tests =
    testList
        "Model files"
        [ test "save then load gives the same network, SDE and standardisation" {
              use temp = tempDir "model"
              let dir = Path.Combine(temp.Path, "m")
              use g = generator 70L
              let config = { ScoreNet.defaultConfig 3 with Hidden = 16; Layers = 2; Embedding = 6 }
              use net = new ScoreNet(config, g, torch.float64)
              let st = { Shift = [| 1.0; 2.0; 3.0 |]; Scale = [| 0.5; 1.0; 4.0 |] }
              let sde2 = Sde.vp 0.2 15.0
              let training = JsonObject()
              training.["steps"] <- JsonValue.Create 123
              ModelFile.save dir net sde2 (Some st) training
              use loaded = ModelFile.loadNative dir
              Expect.equal loaded.Info.Sde sde2 "SDE"
              Expect.equal loaded.Info.Standardisation (Some st) "standardisation"
              Expect.equal loaded.Info.Dtype torch.float64 "dtype"
              Expect.equal loaded.Info.SampleShape [| 3L |] "sample shape"
              Expect.equal loaded.Info.TimeScale 1.0 "time scale"
              use x = torch.randn ([| 4L; 3L |], dtype = torch.float64, generator = g)
              use t = torch.rand ([| 4L |], dtype = torch.float64, generator = g)
              use _ng = torch.no_grad ()
              use a = net.forward (x, t)
              use b = loaded.Model.Forward x t
              Expect.isTrue (same a b) "identical outputs"
              let _, _, meta = ModelFile.readConfig dir
              Expect.equal (meta.["steps"].GetValue<int>()) 123 "training metadata kept"
          }

          test "every SDE round-trips through the model file; a file of the previous version (vp) still loads" {
              use temp = tempDir "sdefile"
              let root = temp.Path
              use g = generator 73L
              use net = new ScoreNet({ ScoreNet.defaultConfig 2 with Hidden = 8; Layers = 1; Embedding = 4 }, g)
              for name, s in [ "vp", Sde.vp 0.2 15.0; "subvp", Sde.subVp 0.1 20.0; "ve", Sde.ve 0.02 30.0 ] do
                  let d = Path.Combine(root, name)
                  ModelFile.save d net s None (JsonObject())
                  let stored = JsonNode.Parse(File.ReadAllText(Path.Combine(d, ModelFile.configFile))).["sde"]
                  Expect.equal (stored.["type"].GetValue<string>()) name "stored type"
                  use loaded = ModelFile.loadNative d
                  Expect.equal loaded.Info.Sde s (sprintf "%s read back" name)
              // the "sde" object as the previous version wrote it (VP only): {"type": "vp", "betaMin", "betaMax"}
              let old = Path.Combine(root, "old")
              ModelFile.save old net sde None (JsonObject())
              let p = Path.Combine(old, ModelFile.configFile)
              let o = JsonNode.Parse(File.ReadAllText p).AsObject()
              o.["sde"] <- JsonNode.Parse("""{ "type": "vp", "betaMin": 0.1, "betaMax": 20.0 }""")
              File.WriteAllText(p, o.ToJsonString())
              use loaded = ModelFile.loadNative old
              Expect.equal loaded.Info.Sde Sde.standardVp "previous version's VP file"
              // an unknown type and invalid parameters name the problem
              o.["sde"] <- JsonNode.Parse("""{ "type": "cld", "betaMin": 0.1, "betaMax": 20.0 }""")
              File.WriteAllText(p, o.ToJsonString())
              expectFileError "unknown SDE" [ "SDE type 'cld' is not supported" ] (fun () -> ModelFile.loadNative old)
              o.["sde"] <- JsonNode.Parse("""{ "type": "ve", "sigmaMin": 1.0, "sigmaMax": 0.5 }""")
              File.WriteAllText(p, o.ToJsonString())
              expectFileError "bad VE parameters" [ "sigmaMax" ] (fun () -> ModelFile.loadNative old)
              o.["sde"] <- JsonNode.Parse("""{ "type": "ve", "betaMin": 0.1, "betaMax": 20.0 }""")
              File.WriteAllText(p, o.ToJsonString())
              expectFileError "VE without its parameters" [ "missing 'sigmaMin'" ] (fun () -> ModelFile.loadNative old)
          }

          test "broken model directories get clear errors" {
              use temp = tempDir "badmodel"
              let root = temp.Path
              use g = generator 71L
              use net = new ScoreNet({ ScoreNet.defaultConfig 2 with Hidden = 8; Layers = 1; Embedding = 4 }, g)
              let fresh name =
                  let d = Path.Combine(root, name)
                  ModelFile.save d net sde None (JsonObject())
                  d
              let edit (d: string) (f: JsonObject -> unit) =
                  let p = Path.Combine(d, ModelFile.configFile)
                  let o = JsonNode.Parse(File.ReadAllText p).AsObject()
                  f o
                  File.WriteAllText(p, o.ToJsonString())
              let d1 = fresh "noconfig"
              File.Delete(Path.Combine(d1, ModelFile.configFile))
              expectFileError "no config" [ "config.json: no such file" ] (fun () -> ModelFile.loadNative d1)
              let d2 = fresh "json"
              File.WriteAllText(Path.Combine(d2, ModelFile.configFile), "{ not json")
              expectFileError "bad JSON" [ "not valid JSON" ] (fun () -> ModelFile.loadNative d2)
              let d3 = fresh "format"
              edit d3 (fun o -> o.["format"] <- JsonValue.Create "something-else")
              expectFileError "format" [ "'format' is 'something-else'" ] (fun () -> ModelFile.loadNative d3)
              let d4 = fresh "missing"
              edit d4 (fun o -> o.Remove "sde" |> ignore)
              expectFileError "missing sde" [ "missing 'sde'" ] (fun () -> ModelFile.loadNative d4)
              let d5 = fresh "weights"
              edit d5 (fun o -> o.["network"].["hidden"] <- JsonValue.Create 9)
              expectFileError "weights of another shape" [ "does not hold this network's weights" ] (fun () -> ModelFile.loadNative d5)
              let d6 = fresh "noweights"
              File.Delete(Path.Combine(d6, ModelFile.weightsFile))
              expectFileError "no weights" [ "weights.bin: no such file" ] (fun () -> ModelFile.loadNative d6)
              expectFileError "absent" [ "no such model directory or TorchScript file" ] (fun () ->
                  ModelFile.load (Path.Combine(root, "absent")) (torchScriptOptions 1.0))
          }

          test "the TorchScript fixture gives PyTorch's outputs to float32 rounding" {
              use m = ModelFile.loadTorchScript (fixture "gaussian_eps_t999.pt") (torchScriptOptions 1.0)
              let reference = JsonDocument.Parse(File.ReadAllText(fixture "gaussian_eps_t999.json")).RootElement
              let rows (name: string) =
                  [| for r in reference.GetProperty(name).EnumerateArray() do
                         for v in r.EnumerateArray() -> v.GetDouble() |]
              use x = torch.tensor(rows "x", dtype = torch.float32).reshape(5L, 2L)
              use t =
                  torch.tensor ([| for v in reference.GetProperty("t_label").EnumerateArray() -> v.GetDouble() |], dtype = torch.float32)
              use _ng = torch.no_grad ()
              use out = m.Model.Forward x t
              let expected = rows "eps"
              // the module computes in float64 and rounds to float32 once: equal to float32 rounding
              Array.iteri2 (fun i a e -> close (1e-6 * max 1.0 (abs e)) a e (sprintf "eps[%d]" i)) (values out) expected
          }

          test "sampling the TorchScript fixture with --time-scale 999 recovers its Gaussian" {
              use m = ModelFile.load (fixture "gaussian_eps_t999.pt") (torchScriptOptions 999.0)
              use g = generator 72L
              use xT = torch.randn ([| 20000L; 2L |], generator = g)
              let r = Sampler.sample sde m.Model (fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 50 1e-3) (unusedNoise ()) xT
              use x = r.Samples
              expectFixtureGaussian x "ODE samples (seed 72)"
          }

          test "TorchScript files with the wrong signature or output shape are rejected" {
              expectModelError "one input" "cannot be called as forward(x, t)" (fun () ->
                  ModelFile.loadTorchScript (fixture "one_input.pt") (torchScriptOptions 1.0))
              expectModelError "wrong shape" "must return a tensor shaped like x [2, 2]; it returned [2]" (fun () ->
                  ModelFile.loadTorchScript (fixture "wrong_shape.pt") (torchScriptOptions 1.0))
              expectModelError "3-D samples for a 2-D model" "cannot be called" (fun () ->
                  ModelFile.loadTorchScript (fixture "gaussian_eps_t999.pt") { torchScriptOptions 1.0 with SampleShape = [| 3L |] })
              expectFileError "not TorchScript" [ "not a TorchScript file" ] (fun () ->
                  ModelFile.loadTorchScript (fixture "gaussian_eps_t999.json") (torchScriptOptions 1.0))
          } ]
