// A class-conditional sample grid of an image model directory (row r: label r), as a PNG:
//   dotnet build src/ScoreSde.Cli -c Release
//   dotnet fsi tests/ScoreSde.Benchmarks/SampleGrid.fsx MODEL_DIR OUT.png dpm|em|pc COLUMNS
// dpm: DPM-Solver (the library's default) with 20 evaluations; em: reverse diffusion without a
// corrector, 200 steps; pc: the paper's PC sampler at 200 steps. Seed 1, one thread, values clamped to
// [-1, 1] (models on centred pixels) and shown in grey levels.
#r "../../src/ScoreSde.Cli/bin/Release/net10.0/TorchSharp.dll"
#r "../../src/ScoreSde.Cli/bin/Release/net10.0/ScoreSde.dll"
#r "../../src/ScoreSde.Cli/bin/Release/net10.0/ScottPlot.dll"
#r "../../src/ScoreSde.Cli/bin/Release/net10.0/SkiaSharp.dll"
#r "../../src/ScoreSde.Cli/bin/Release/net10.0/HarfBuzzSharp.dll"
open System
open System.Runtime.InteropServices
// fsi does not read the CLI's deps.json: point SkiaSharp and HarfBuzzSharp at the CLI's native
// libraries (Linux x64)
let nativeDir =
    IO.Path.Combine(__SOURCE_DIRECTORY__, "..", "..", "src", "ScoreSde.Cli", "bin", "Release", "net10.0", "runtimes", "linux-x64", "native")
for assembly in [ typeof<SkiaSharp.SKColor>.Assembly; typeof<HarfBuzzSharp.Blob>.Assembly ] do
    NativeLibrary.SetDllImportResolver(
        assembly,
        DllImportResolver(fun name _ _ ->
            let path = IO.Path.Combine(nativeDir, name + ".so")
            if IO.File.Exists path then NativeLibrary.Load path else IntPtr.Zero)
    )
open TorchSharp
open ScoreSde
Native.ensureLoaded ()
torch.set_num_threads 1
let dir, out = fsi.CommandLineArgs.[1], fsi.CommandLineArgs.[2]
let loaded = ModelFile.loadNative dir
let net = loaded.Network :?> UNet
let sde = loaded.Info.Sde
let rows, cols = 10, int fsi.CommandLineArgs.[4]
// row r: class r (labels), all columns the same class
let labels = torch.tensor (Array.init (rows * cols) (fun i -> int64 (i / cols)))
let noise = Noise.fromSeed 1L torch.CPU
let xT = Sampler.prior sde [| int64 (rows * cols); 1L; 28L; 28L |] torch.float32 torch.CPU noise
let dpm = Sampling.dpmSolver
let sampling =
    match fsi.CommandLineArgs.[3] with
    | "dpm" -> { dpm with Schedule = { dpm.Schedule with Steps = 20 } }
    | "em" ->
        { Sampling.pc with
            Method = Method.PredictorCorrector(Predictor.ReverseDiffusion, Corrector.NoCorrector)
            Schedule = Schedule.uniform 200 1e-3 }
    | _ -> { Sampling.pc with Schedule = Schedule.uniform 200 1e-3 }
let r =
    use _ng = torch.no_grad ()
    Sampler.sample sde (UNet.conditionalModel net labels) sampling noise xT
let x = r.Samples.contiguous().data<float32>().ToArray() |> Array.map (fun v -> max -1.0f (min 1.0f v))
let grid = Array2D.zeroCreate<float> (rows * 29) (cols * 29)
for i in 0 .. rows * cols - 1 do
    let gr, gc = i / cols, i % cols
    for y in 0..27 do
        for xx in 0..27 do
            grid.[gr * 29 + y, gc * 29 + xx] <- float x.[i * 784 + y * 28 + xx]
// ScottPlot heatmaps put row 0 at the top
let plot = ScottPlot.Plot()
let hm = plot.Add.Heatmap(grid)
hm.Colormap <- ScottPlot.Colormaps.Grayscale()
plot.Axes.Margins(0.0, 0.0)
plot.HideGrid()
plot.Layout.Frameless()
plot.SavePng(out, cols * 29 * 3, rows * 29 * 3) |> ignore
printfn "wrote %s" out
