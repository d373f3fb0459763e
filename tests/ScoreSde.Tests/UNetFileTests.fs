module ScoreSde.Tests.UNetFileTests

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DataFileTests
open ScoreSde.Tests.ModelFileTests
open ScoreSde.Tests.UNetTests
open ScoreSde.Tests.CliTests

/// The PyTorch twin's fixture (fixtures/make_unet_fixtures.py): config, inputs and outputs.
type private Reference = { Config: UNetConfig; X: Tensor; T: Tensor; Labels: Tensor; Values: string -> float[] }

let private reference () =
    let root = JsonDocument.Parse(File.ReadAllText(fixture "unet_tiny.json")).RootElement
    let floats (name: string) = [| for v in root.GetProperty(name).EnumerateArray() -> v.GetDouble() |]
    let config = NetworkConfig.unetOfJson "unet_tiny.json" (JsonNode.Parse(root.GetProperty("config").GetRawText()))
    { Config = config
      X = torch.tensor(floats "x", dtype = torch.float32).reshape([| 3L; 2L; 7L; 5L |])
      T = torch.tensor (floats "t", dtype = torch.float32)
      Labels = torch.tensor [| for v in root.GetProperty("labels").EnumerateArray() -> v.GetInt64() |]
      Values = floats }

/// Outputs of float32 networks agree to float32 accuracy: the fixture's own float32 and float64
/// outputs differ by up to 3e-7 on values up to 1.4, and libtorch 2.10 may sum in another order
/// than PyTorch 1.13; 1e-5 absolute is ten times float32's epsilon at the largest output.
let private expectClose (what: string) (actual: Tensor) (expected: float[]) =
    Array.iteri2 (fun i a e -> close 1e-5 a e (sprintf "%s [%d]" what i)) (values actual) expected

let private sde = Sde.standardVp

[<Tests>]
let tests =
    testList
        "U-Net files and the PyTorch round trip"
        [ test "a saved U-Net loads back with bit-identical outputs, pixels and sample shape (float32, float64)" {
              for dtype in [ torch.float32; torch.float64 ] do
                  use dirTemp = tempDir "unetfile"
                  let dir = Path.Combine(dirTemp.Path, "m")
                  let config = { tiny 2 7 5 with Classes = 3 }
                  use g = generator 30L
                  use net = new UNet(config, g, dtype)
                  let training = JsonObject()
                  training.["note"] <- JsonValue.Create "test"
                  ModelFile.saveUNet dir net sde PixelRange.ZeroOne training
                  use loaded = ModelFile.loadNative dir
                  Expect.equal loaded.Info.SampleShape [| 2L; 7L; 5L |] "sample shape"
                  Expect.equal loaded.Info.Pixels (Some PixelRange.ZeroOne) "pixels"
                  Expect.equal loaded.Info.Dtype dtype "dtype"
                  Expect.stringContains loaded.Info.Description "U-Net 2x7x5" "description"
                  let config', _, meta = ModelFile.readConfig dir
                  Expect.equal config' (NetworkConfig.UNet config) "architecture"
                  Expect.equal (meta.["note"].GetValue<string>()) "test" "training metadata"
                  use x = torch.randn ([| 3L; 2L; 7L; 5L |], dtype = dtype, generator = g)
                  use t = torch.rand ([| 3L |], dtype = dtype, generator = g)
                  use labels = torch.tensor [| 0L; 2L; 3L |]
                  use _ng = torch.no_grad ()
                  use a = net.forward (x, t)
                  use b = loaded.Model.Forward x t
                  Expect.isTrue (same a b) (sprintf "%A: identical outputs" dtype)
                  let back = loaded.Network :?> UNet
                  use c = net.Forward(x, t, labels)
                  use d = back.Forward(x, t, labels)
                  Expect.isTrue (same c d) (sprintf "%A: identical conditional outputs" dtype)
          }

          test "broken U-Net model directories get clear errors" {
              use g = generator 31L
              use net = new UNet(tiny 1 8 8, g)
              use dTemp = tempDir "badunet"
              let fresh name (f: JsonObject -> unit) =
                  let d = Path.Combine(dTemp.Path, name)
                  ModelFile.saveUNet d net sde PixelRange.Centred (JsonObject())
                  let p = Path.Combine(d, ModelFile.configFile)
                  let o = JsonNode.Parse(File.ReadAllText p).AsObject()
                  f o
                  File.WriteAllText(p, o.ToJsonString())
                  d
              let d1 = fresh "pixels" (fun o -> o.["pixels"] <- JsonValue.Create "bytes")
              expectFileError "pixels" [ "'pixels' must be zero-one or centred (got bytes)" ] (fun () -> ModelFile.loadNative d1)
              let d2 = fresh "type" (fun o -> o.["network"].["type"] <- JsonValue.Create "transformer")
              expectFileError "type" [ "network type 'transformer'"; "'mlp' or 'unet'" ] (fun () -> ModelFile.loadNative d2)
              let d3 = fresh "mults" (fun o -> o.["network"].["channelMultipliers"] <- JsonValue.Create 2)
              expectFileError "mults" [ "'channelMultipliers' must be an array of integers" ] (fun () -> ModelFile.loadNative d3)
              let d4 = fresh "groups" (fun o -> o.["network"].["groups"] <- JsonValue.Create 3)
              expectFileError "groups" [ "config.Groups" ] (fun () -> ModelFile.loadNative d4)
              let d5 = fresh "width" (fun o -> o.["network"].["baseChannels"] <- JsonValue.Create 12)
              expectFileError "weights" [ "does not hold this network's weights" ] (fun () -> ModelFile.loadNative d5)
          }

          test "the PyTorch twin's TorchScript export loads as a model and gives PyTorch's outputs" {
              let r = reference ()
              use x = r.X
              use t = r.T
              use labels = r.Labels
              use loaded = ModelFile.load (fixture "unet_tiny.pt") { torchScriptOptions 1.0 with SampleShape = [| 2L; 7L; 5L |] }
              use _ng = torch.no_grad ()
              use out = loaded.Model.Forward x t
              expectClose "TorchScript in TorchSharp vs PyTorch" out (r.Values "eps_null")
          }

          test "weights copied by name from the TorchScript export make the F# U-Net give PyTorch's outputs" {
              let r = reference ()
              use x = r.X
              use t = r.T
              use labels = r.Labels
              use net = UNet.ofTorchScript (fixture "unet_tiny.pt") r.Config torch.float32
              use _ng = torch.no_grad ()
              use a = net.forward (x, t)
              expectClose "null label vs PyTorch float32" a (r.Values "eps_null")
              expectClose "null label vs PyTorch float64" a (r.Values "eps_null_float64")
              use b = net.Forward(x, t, labels)
              expectClose "labels vs PyTorch float32" b (r.Values "eps_labels")
              expectClose "labels vs PyTorch float64" b (r.Values "eps_labels_float64")
              // in float64 the F# network matches PyTorch's float64 outputs to the float32 rounding of
              // the weights and inputs alone (both sides compute in float64 from the same float32 values)
              use net64 = UNet.ofTorchScript (fixture "unet_tiny.pt") r.Config torch.float64
              use c = net64.Forward(x.to_type torch.float64, t.to_type torch.float64, labels)
              Array.iteri2 (fun i a e -> close 1e-12 a e (sprintf "float64 [%d]" i)) (values c) (r.Values "eps_labels_float64")
          }

          test "a model directory written by PyTorch (weights.bin in TorchSharp's format) loads with the same outputs" {
              let r = reference ()
              use x = r.X
              use t = r.T
              use labels = r.Labels
              use loaded = ModelFile.loadNative (fixture "unet_tiny_model")
              Expect.equal loaded.Info.Pixels (Some PixelRange.Centred) "pixels"
              use _ng = torch.no_grad ()
              use a = loaded.Model.Forward x t
              expectClose "model directory vs PyTorch" a (r.Values "eps_null")
              use b = (loaded.Network :?> UNet).Forward(x, t, labels)
              expectClose "model directory with labels vs PyTorch" b (r.Values "eps_labels")
          }

          test "copying by name refuses missing, unexpected and misshapen tensors" {
              let r = reference ()
              r.X.Dispose()
              r.T.Dispose()
              r.Labels.Dispose()
              let expectTensors what (fragments: string list) f =
                  try
                      f () |> ignore
                      failtestf "%s: expected an ArgumentException" what
                  with :? ArgumentException as e ->
                      for fragment in fragments do
                          Expect.stringContains e.Message fragment what
              expectTensors "unconditional config" [ "unexpected label_embedding" ] (fun () ->
                  UNet.ofTorchScript (fixture "unet_tiny.pt") { r.Config with Classes = 0 } torch.float32)
              expectTensors "another width" [ "shape" ] (fun () ->
                  UNet.ofTorchScript (fixture "unet_tiny.pt") { r.Config with TimeChannels = 6 } torch.float32)
              use g = generator 32L
              use net = new UNet(r.Config, g)
              use other = new UNet(r.Config, g)
              use x0 = torch.zeros ([| 1L; 2L; 7L; 5L |])
              use t0 = torch.ones ([| 1L |])
              use _ng = torch.no_grad ()
              use before = net.forward (x0, t0)
              let partial =
                  other.state_dict ()
                  |> Seq.filter (fun kv -> kv.Key <> "time_dense0.weight")
                  |> Seq.map (fun kv -> kv.Key, kv.Value)
                  |> Seq.toArray
              expectTensors "missing" [ "test does not hold"; "missing time_dense0.weight" ] (fun () -> UNet.loadNamed "test" net partial)
              use after = net.forward (x0, t0)
              Expect.isTrue (same before after) "nothing copied on failure"
              expectFileError "not TorchScript" [ "not a TorchScript file" ] (fun () ->
                  UNet.ofTorchScript (fixture "unet_tiny.json") r.Config torch.float32)
          }

          test "scoresde sample takes the TorchScript U-Net with --shape" {
              use outTemp = tempDir "cliunet"
              let out = Path.Combine(outTemp.Path, "s.npy")
              cliOk
                  [ "sample"
                    "--model"
                    fixture "unet_tiny.pt"
                    "--shape"
                    "2,7,5"
                    "--sampler"
                    "dpm"
                    "--n"
                    "4"
                    "--out"
                    out ]
              |> ignore
              let a = Npy.read out
              Expect.equal a.Shape [| 4L; 2L; 7L; 5L |] "sample shape"
              Expect.isTrue (a.Values |> Array.forall Double.IsFinite) "finite samples"
          } ]
