// Image training steps per second at a thread count, several U-Net configurations in one process:
//   dotnet build tests/ScoreSde.Benchmarks -c Release
//   dotnet fsi --optimize+ tests/ScoreSde.Benchmarks/ImageTrainSpeed.fsx THREADS WIDTH:MULTS:BLOCKS:a|n ...
// e.g. `... ImageTrainSpeed.fsx 1 16:1,2,4:1:a 32:1,2,2:1:a` (a: attention at 7 pixels, n: none).
// Each configuration: a class-conditional U-Net trained by ImageTraining on Fashion-MNIST (batch 64,
// label dropout 0.1), 2 warm-up steps, then 4 timed steps: wall-clock and process CPU seconds per step.
#r "bin/Release/net10.0/TorchSharp.dll"
#r "bin/Release/net10.0/ScoreSde.dll"
open System
open TorchSharp
open ScoreSde
Native.ensureLoaded ()
let args = fsi.CommandLineArgs
let threads = int args.[1]
torch.set_num_threads threads
let set = FashionMnist.load FashionMnist.defaultDirectory Split.Train
let cpu () = Diagnostics.Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds
for spec in args.[2..] do
    let p = spec.Split(':')
    let width, mults, blocks, attn = int p.[0], p.[1].Split(',') |> Array.map int |> List.ofArray, int p.[2], p.[3] = "a"
    let cfg =
        { UNet.defaultConfig 1 28 28 with
            BaseChannels = width
            ChannelMultipliers = mults
            BlocksPerLevel = blocks
            AttentionResolutions = (if attn then [ 7 ] else [])
            Classes = 10 }
    let g = new torch.Generator(1UL, torch.CPU)
    let net = new UNet(cfg, g)
    let pc = net.ParameterCount
    use tr = ImageTraining.start Sde.standardVp { ImageTraining.defaults with LabelDropout = 0.1 } net set g
    ImageTraining.runUntil tr 2 (fun _ _ -> ()) |> ignore
    let c0, w = cpu (), Diagnostics.Stopwatch.StartNew()
    ImageTraining.runUntil tr 6 (fun _ _ -> ()) |> ignore
    let wall, c = w.Elapsed.TotalSeconds / 4.0, (cpu () - c0) / 4.0
    printfn
        "%s threads %d params %d: wall %.2f s/step (%.1f img/s), cpu %.2f s/step (%.1f img per cpu-s)"
        spec
        threads
        pc
        wall
        (64.0 / wall)
        c
        (64.0 / c)
