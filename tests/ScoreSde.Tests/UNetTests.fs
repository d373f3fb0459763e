module ScoreSde.Tests.UNetTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

/// A tiny U-Net for c x h x w images: 8 base channels, levels x1, x2, one block, 4 groups.
let tiny (c: int) (h: int) (w: int) =
    { UNet.defaultConfig c h w with
        BaseChannels = 8
        ChannelMultipliers = [ 1; 2 ]
        BlocksPerLevel = 1
        AttentionResolutions = [ (h + 1) / 2 ]
        Groups = 4
        FourierFeatures = 8
        TimeChannels = 16 }

let private inputs (seed: int64) (config: UNetConfig) (batch: int64) (dtype: torch.ScalarType) =
    use g = generator seed
    let x =
        torch.randn ([| batch; int64 config.Channels; int64 config.Height; int64 config.Width |], dtype = dtype, generator = g)
    let t = torch.rand ([| batch |], dtype = dtype, generator = g)
    x, t

let private expectArgument (what: string) (param: string) (f: unit -> 'a) =
    try
        f () |> ignore
        failtestf "%s: expected an ArgumentException" what
    with :? ArgumentException as e ->
        Expect.equal e.ParamName param (sprintf "%s: parameter name (%s)" what e.Message)

[<Tests>]
let tests =
    testList
        "U-Net"
        [ test "outputs have the input's shape for several configurations" {
              let configs =
                  [ "tiny 1x8x8", tiny 1 8 8
                    "odd non-square 2x7x5, three levels",
                    { tiny 2 7 5 with ChannelMultipliers = [ 1; 2; 2 ]; AttentionResolutions = [ 4; 2 ] }
                    "no attention, two blocks", { tiny 3 6 6 with BlocksPerLevel = 2; AttentionResolutions = [] }
                    "class-conditional", { tiny 1 8 8 with Classes = 3 }
                    "default 1x28x28", UNet.defaultConfig 1 28 28 ]
              for name, config in configs do
                  use g = generator 1L
                  use net = new UNet(config, g)
                  let x, t = inputs 2L config 3L torch.float32
                  use x = x
                  use t = t
                  use _ng = torch.no_grad ()
                  use out = net.forward (x, t)
                  Expect.equal out.shape x.shape name
                  Expect.isTrue (allFinite out) (name + ": finite")
                  use one = net.forward (x, t.narrow (0L, 0L, 1L))
                  Expect.equal one.shape x.shape (name + ": one time for the batch")
          }

          test "the default 28 x 28 network has levels 28, 14, 7 and the parameter count of its layers" {
              use g = generator 3L
              use net = new UNet(UNet.defaultConfig 1 28 28, g)
              Expect.equal net.LevelHeights [ 28; 14; 7 ] "levels"
              // counted by hand from the architecture: conv k x k: k^2 in out + out; dense: in out + out;
              // GroupNorm: 2 c; a residual block in -> out with time width 128:
              let conv k i o = k * k * i * o + o
              let dense i o = i * o + o
              let res i o = 2 * i + conv 3 i o + dense 128 o + 2 * o + conv 3 o o + (if i <> o then conv 1 i o else 0)
              let attn c = 2 * c + conv 1 c (3 * c) + conv 1 c c
              let down =
                  res 32 32
                  + res 32 32
                  + conv 3 32 32
                  + res 32 64
                  + res 64 64
                  + conv 3 64 64
                  + (res 64 64 + attn 64) * 2
              let mid = res 64 64 + attn 64 + res 64 64
              let up =
                  (res 128 64 + attn 64) * 3
                  + conv 3 64 64 // level 7: skips 64, 64, 64
                  + res 128 64
                  + res 128 64
                  + res 96 64
                  + conv 3 64 64 // level 14: skips 64, 64, 32
                  + res 96 32
                  + res 64 32
                  + res 64 32 // level 28: skips 32, 32, 32
              let total = dense 32 128 + dense 128 128 + conv 3 1 32 + down + mid + up + 2 * 32 + conv 3 32 1
              Expect.equal net.ParameterCount (int64 total) "parameters"
          }

          test "every parameter receives a gradient" {
              for config in [ tiny 1 8 8; { tiny 2 7 5 with Classes = 4 } ] do
                  use g = generator 4L
                  use net = new UNet(config, g)
                  let x, t = inputs 5L config 4L torch.float32
                  use x = x
                  use t = t
                  use labels = torch.tensor ([| 0L; 1L; 2L; 4L |])
                  use out = if config.Classes > 0 then net.Forward(x, t, labels) else net.forward (x, t)
                  use w = torch.randn (out.shape, generator = g)
                  use loss = (out * w).sum()
                  loss.backward ()
                  for struct (name, p) in net.named_parameters () do
                      let grad = p.grad
                      if isNull grad then
                          failtestf "%s has no gradient" name
                      let gv = values grad
                      Expect.isTrue (gv |> Array.forall Double.IsFinite) (name + ": finite gradient")
                      Expect.isTrue (gv |> Array.exists (fun v -> v <> 0.0)) (name + ": nonzero gradient")
          }

          test "the same seed gives the same network and outputs; another seed another" {
              let config = { tiny 1 8 8 with Classes = 2 }
              let run seed =
                  use g = generator seed
                  use net = new UNet(config, g)
                  let x, t = inputs 9L config 2L torch.float32
                  use x = x
                  use t = t
                  use _ng = torch.no_grad ()
                  use out = net.forward (x, t)
                  values out
              Expect.equal (run 11L) (run 11L) "same seed"
              Expect.notEqual (run 11L) (run 12L) "another seed"
          }

          test "construction draws nothing from torch's global generator" {
              torch.manual_seed 99L |> ignore
              use before = torch.rand ([| 4L |])
              torch.manual_seed 99L |> ignore
              use g = generator 1L
              use net = new UNet(tiny 1 8 8, g)
              use after = torch.rand ([| 4L |])
              Expect.isTrue (same before after) "global stream untouched"
          }

          test "float64 and float32 networks with the same weights agree to float32 precision" {
              let config = { tiny 1 8 8 with Classes = 2 }
              use g = generator 13L
              use n64 = new UNet(config, g, torch.float64)
              use n32 = UNet.Empty(config, torch.float32)
              use _ng = torch.no_grad ()
              for KeyValue(name, p) in n32.state_dict () do
                  p.copy_ (n64.state_dict().[name]) |> ignore
              let x, t = inputs 14L config 3L torch.float64
              use x = x
              use t = t
              use o64 = n64.forward (x, t)
              Expect.equal o64.dtype torch.float64 "float64 output"
              use x32 = x.to_type (torch.float32)
              use o32 = n32.forward (x32, t.to_type (torch.float32))
              Expect.equal o32.dtype torch.float32 "float32 output"
              let a, b = values o64, values o32
              let scale = a |> Array.map abs |> Array.max
              // float32 rounding (6e-8 relative) accumulated over ~20 layers of sums of <= 300 terms
              Array.iter2 (fun u v -> close (1e-4 * scale) v u "float32 vs float64") a b
          }

          test "class conditioning changes the output; the null label is the default; one label broadcasts" {
              let config = { tiny 1 8 8 with Classes = 3 }
              use g = generator 15L
              use net = new UNet(config, g)
              let x, t = inputs 16L config 2L torch.float32
              use x = x
              use t = t
              use _ng = torch.no_grad ()
              let eval (labels: int64[]) =
                  use l = torch.tensor labels
                  use o = net.Forward(x, t, l)
                  values o
              let uncond =
                  use o = net.forward (x, t)
                  values o
              Expect.equal (eval [| 3L; 3L |]) uncond "explicit null label = forward(x, t)"
              Expect.notEqual (eval [| 0L; 0L |]) (eval [| 1L; 1L |]) "labels 0 and 1 differ"
              Expect.notEqual (eval [| 0L; 0L |]) uncond "label 0 differs from the null label"
              Expect.equal (eval [| 2L |]) (eval [| 2L; 2L |]) "one label for the batch"
              use labels = torch.tensor ([| 1L; 2L |])
              let model = UNet.conditionalModel net labels
              use viaModel = model.Forward x t
              Expect.equal (values viaModel) (eval [| 1L; 2L |]) "conditionalModel closes over the labels"
              use uncondModel = (UNet.toModel net).Forward x t
              Expect.equal (values uncondModel) uncond "toModel uses the null label"
          }

          test "bad inputs and configurations are rejected naming the parameter" {
              use g = generator 17L
              use net = new UNet(tiny 1 8 8, g)
              use cond = new UNet({ tiny 1 8 8 with Classes = 2 }, g)
              use x = torch.zeros ([| 2L; 1L; 8L; 8L |])
              use t = torch.zeros ([| 2L |])
              expectArgument "wrong image size" "x" (fun () -> net.forward (torch.zeros ([| 2L; 1L; 8L; 9L |]), t))
              expectArgument "three times for two images" "t" (fun () -> net.forward (x, torch.zeros ([| 3L |])))
              expectArgument "labels on an unconditional net" "labels" (fun () -> net.Forward(x, t, torch.tensor ([| 0L; 1L |])))
              expectArgument "label beyond the null label" "labels" (fun () -> cond.Forward(x, t, torch.tensor ([| 0L; 3L |])))
              expectArgument "negative label" "labels" (fun () -> cond.Forward(x, t, torch.tensor ([| -1L; 0L |])))
              expectArgument "float labels" "labels" (fun () -> cond.Forward(x, t, torch.tensor ([| 0.0f; 1.0f |])))
              expectArgument "groups" "config.Groups" (fun () -> new UNet({ tiny 1 8 8 with Groups = 3 }, g))
              expectArgument "odd Fourier width" "config.FourierFeatures" (fun () -> new UNet({ tiny 1 8 8 with FourierFeatures = 7 }, g))
              expectArgument "no levels" "config.ChannelMultipliers" (fun () -> new UNet({ tiny 1 8 8 with ChannelMultipliers = [] }, g))
              expectArgument "dropout 1" "config.Dropout" (fun () -> new UNet({ tiny 1 8 8 with Dropout = 1.0 }, g))
              expectArgument "int dtype" "dtype" (fun () -> new UNet(tiny 1 8 8, g, torch.int32))
          }

          test "the channels-last layout gives the same outputs and gradients; the input is never modified" {
              let config = { tiny 2 7 5 with Classes = 2 }
              use g = generator 22L
              use net = new UNet(config, g)
              let x, t = inputs 23L config 3L torch.float32
              use x = x
              use t = t
              let xBefore = values x
              let run (channelsLast: bool) (grad: bool) =
                  net.ChannelsLast <- channelsLast
                  net.zero_grad () |> ignore
                  if grad then
                      use out = net.forward (x, t)
                      use loss = out.square().sum()
                      loss.backward ()
                      values out, [| for p in net.parameters () -> values p.grad |] |> Array.concat
                  else
                      use _ng = torch.no_grad ()
                      use out = net.forward (x, t)
                      Expect.isTrue (out.is_contiguous ()) "ordinary layout out"
                      values out, [||]
              let plain, plainGrad = run false true
              for channelsLast, grad in [ false, false; true, false; true, true ] do
                  let out, gradient = run channelsLast grad
                  let what = sprintf "channels-last %b, gradients %b" channelsLast grad
                  // the same sums in another order: float32 rounding (outputs up to ~2, ~15 layers)
                  Array.iter2 (fun a b -> close 1e-5 a b (what + ": output")) out plain
                  if grad then
                      let scale = plainGrad |> Array.map abs |> Array.max
                      Array.iter2 (fun a b -> close (1e-5 * scale) a b (what + ": gradient")) gradient plainGrad
                  Expect.equal (values x) xBefore (what + ": x unchanged")
              net.ChannelsLast <- false
          }

          test "dropout draws its masks from the caller's generator, only while training" {
              let config = { tiny 1 8 8 with Dropout = 0.3 }
              use g = generator 18L
              use net = new UNet(config, g)
              let x, t = inputs 19L config 2L torch.float32
              use x = x
              use t = t
              net.train ()
              try
                  net.forward (x, t) |> ignore
                  failtest "expected an error without a dropout generator"
              with :? InvalidOperationException as e ->
                  Expect.stringContains e.Message "DropoutGenerator" "message"
              let run seed =
                  use dg = generator seed
                  net.DropoutGenerator <- dg
                  use _ng = torch.no_grad ()
                  use o = net.forward (x, t)
                  net.DropoutGenerator <- null
                  values o
              Expect.equal (run 20L) (run 20L) "same dropout seed, same output"
              Expect.notEqual (run 20L) (run 21L) "another dropout seed, another output"
              net.eval ()
              use plain = UNet.copy net
              use _ng = torch.no_grad ()
              use a = net.forward (x, t)
              use b = plain.forward (x, t)
              Expect.isTrue (same a b) "eval mode: no dropout, copy identical"
          } ]
