/// The U-Net against PyTorch (not BenchmarkDotNet): the F# UNet and its PyTorch twin
/// (python/scoresde_unet.py, served call by call by unet_speed.py under Debian's PyTorch), same
/// configuration, batch and thread count. The two sides alternate single calls (PyTorch then F#, then
/// F# then PyTorch, ...), so each pair of calls runs within a second or two of each other and a slow
/// phase of the shared machine weighs on both alike; the ratio is taken per pair. Cases:
///   forward: eps = net(x, t), eval mode, no gradient (what a sampler does per evaluation);
///   train:   one denoising score-matching step: t ~ U(eps, 1), z ~ N(0, I), the loss
///            (Training.loss, noise weighting), zero the gradients, backward, Adam, read the loss;
/// each in the default layout and channels-last (PyTorch: network and input converted to
/// torch.channels_last; F#: UNet.ChannelsLast). Reported: median seconds per call of each side and the
/// median over pairs of PyTorch's time over F#'s (above 1: F# is faster), by wall clock and by CPU time
/// (user + system seconds of the whole process per call).
module ScoreSde.Benchmarks.UNetSpeed

open System
open System.Diagnostics
open System.IO
open System.Text
open System.Text.Json
open TorchSharp
open ScoreSde

/// Options of `--unet`.
type Options =
    {
        Batch: int
        Threads: int
        Warmup: int
        /// Timed pairs of forward calls per layout.
        Forward: int
        /// Timed pairs of training steps per layout.
        Train: int
        /// Timed pairs of sampling runs (default layout only).
        Sample: int
        /// Network evaluations per sampling run.
        Evaluations: int
        /// (name, JSON overrides of the default 1 x 28 x 28 configuration, the same F# configuration)
        Configs: (string * string * UNetConfig) list
    }

let private baseConfig = UNet.defaultConfig 1 28 28

/// The configurations measured by default: the one comparable to the score-SDE tutorial's network
/// (1.1 M parameters), the library's default (1.6 M) and the Fashion-MNIST run's class-conditional
/// network (0.73 M; width 16, levels x1, x2, x4, one block per level; labels null here).
let defaultConfigs =
    [ "1 block per level (1.1 M)", """{"blocksPerLevel": 1}""", { baseConfig with BlocksPerLevel = 1 }
      "UNet.defaultConfig (1.6 M)", "{}", baseConfig
      "Fashion-MNIST run (0.73 M)",
      """{"baseChannels": 16, "channelMultipliers": [1, 2, 4], "blocksPerLevel": 1, "classes": 10}""",
      { baseConfig with
          BaseChannels = 16
          ChannelMultipliers = [ 1; 2; 4 ]
          BlocksPerLevel = 1
          Classes = 10 } ]

let defaults =
    { Batch = 64
      Threads = 2
      Warmup = 3
      Forward = 20
      Train = 12
      Sample = 4
      Evaluations = 20
      Configs = defaultConfigs }

let private median (xs: float seq) =
    let a = Seq.toArray xs |> Array.sort
    if a.Length = 0 then nan
    elif a.Length % 2 = 1 then a.[a.Length / 2]
    else 0.5 * (a.[a.Length / 2 - 1] + a.[a.Length / 2])

/// The repository root (holding ScoreSde.sln) above the working directory or the binary.
let private repoRoot () =
    let rec up (d: DirectoryInfo) =
        if isNull d then None
        elif File.Exists(Path.Combine(d.FullName, "ScoreSde.sln")) then Some d.FullName
        else up d.Parent
    match up (DirectoryInfo Environment.CurrentDirectory) with
    | Some r -> r
    | None ->
        match up (DirectoryInfo AppContext.BaseDirectory) with
        | Some r -> r
        | None -> failwith "ScoreSde.sln not found above the working directory or the benchmark binary"

/// The PyTorch side: a python process answering one call per line.
type private PyTorchServer(o: Options, overrides: string) =
    let script = Path.Combine(repoRoot (), "tests", "ScoreSde.Benchmarks", "unet_speed.py")
    let psi =
        ProcessStartInfo(
            "/usr/bin/python3",
            [ script
              "--config"
              overrides
              "--batch"
              string o.Batch
              "--threads"
              string o.Threads
              "--evaluations"
              string o.Evaluations ],
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = false
        )
    let p = Process.Start psi
    let readJson () =
        let line = p.StandardOutput.ReadLine()
        if isNull line then
            failwithf "unet_speed.py ended early (exit code %s)" (if p.HasExited then string p.ExitCode else "?")
        JsonDocument.Parse(line).RootElement
    let info = readJson ()
    member _.TorchVersion = info.GetProperty("torch").GetString()

    /// One call: wall-clock and CPU seconds.
    member _.Call(name: string) =
        p.StandardInput.WriteLine name
        p.StandardInput.Flush()
        let r = readJson ()
        r.GetProperty("wall").GetDouble(), r.GetProperty("cpu").GetDouble()

    interface IDisposable with
        member _.Dispose() =
            p.StandardInput.WriteLine "quit"
            p.StandardInput.Flush()
            p.WaitForExit()
            p.Dispose()

let private cpuSeconds () =
    use p = Process.GetCurrentProcess()
    p.TotalProcessorTime.TotalSeconds

/// The F# side in one layout: a network, its optimiser and the two calls.
type private FSharpCase(o: Options, config: UNetConfig, channelsLast: bool) =
    let g = new torch.Generator(0UL, torch.CPU)
    let net = new UNet(config, g)
    do net.ChannelsLast <- channelsLast
    let parameters = net.parameters () |> Seq.toArray
    let adam = new Adam(parameters)
    let b = int64 o.Batch
    let shape = [| b; int64 config.Channels; int64 config.Height; int64 config.Width |]
    let x0 =
        use u = torch.rand (shape, generator = g)
        Tensors.affine u 2.0 -1.0
    let model (x: Tensor) (t: Tensor) = net.Forward(x, t, null)

    member _.ParameterCount = net.ParameterCount

    member _.Forward() =
        net.eval ()
        use scope = torch.NewDisposeScope()
        use _noGrad = torch.no_grad ()
        let t = torch.rand ([| b |], generator = g)
        net.Forward(x0, t, null) |> ignore

    member _.Train() =
        net.train ()
        use scope = torch.NewDisposeScope()
        let u = torch.rand ([| b |], dtype = torch.float64, generator = g)
        let times = Tensors.toHost u |> Array.map (fun v -> 1e-5 + (1.0 - 1e-5) * v)
        let t = torch.tensor (times, dtype = torch.float32)
        let z = torch.randn (shape, generator = g)
        Gradients.zero parameters
        let loss = Training.loss Sde.standardVp LossWeighting.Noise model x0 t z
        loss.backward ()
        adam.Step 2e-4
        loss.item<float32>() |> ignore

    /// Sampling with a fixed budget: Euler-Maruyama on the reverse VP-SDE (no corrector), Evaluations
    /// uniform steps from t = 1 to 1e-3, from a prior draw; one network evaluation per step.
    member _.Sample() =
        net.eval ()
        use scope = torch.NewDisposeScope()
        use _noGrad = torch.no_grad ()
        let sde = Sde.standardVp
        let noise = Noise.fromGenerator g
        let xT = Sampler.prior sde shape torch.float32 torch.CPU noise
        let sampling =
            { Sampling.pc with
                Method = Method.PredictorCorrector(Predictor.EulerMaruyama, Corrector.NoCorrector)
                Schedule = Schedule.uniform o.Evaluations 1e-3
                Finish = Finish.NoFinish }
        let r = Sampler.sample sde (UNet.toModel net) sampling noise xT
        r.Samples.Dispose()

    /// One call ("forward", "train" or "sample"): wall-clock and CPU seconds.
    member c.Call(what: string) =
        let cpu = cpuSeconds ()
        let sw = Stopwatch.StartNew()
        match what with
        | "train" -> c.Train()
        | "sample" -> c.Sample()
        | _ -> c.Forward()
        sw.Elapsed.TotalSeconds, cpuSeconds () - cpu

    interface IDisposable with
        member _.Dispose() =
            (adam :> IDisposable).Dispose()
            x0.Dispose()
            net.Dispose()
            g.Dispose()

/// Run the comparison and return the report (a markdown table with its command and machine).
let run (o: Options) (command: string) =
    torch.set_num_threads o.Threads
    let sb = StringBuilder()
    let line (s: string) =
        printfn "%s" s
        sb.AppendLine s |> ignore
    line (sprintf "Machine: %s" (Report.machine ()))
    line (sprintf "Command: %s" command)
    line (
        sprintf
            "Batch %d, %d threads on both sides; per layout %d warm-up calls each, then %d pairs of forward calls and %d pairs of training steps, and (default layout) %d pairs of sampling runs of %d evaluations, the two sides alternating call by call."
            o.Batch
            o.Threads
            o.Warmup
            o.Forward
            o.Train
            o.Sample
            o.Evaluations
    )
    let rows = ResizeArray<string>()
    let mutable torchVersion = ""
    for name, overrides, config in o.Configs do
        use py = new PyTorchServer(o, overrides)
        torchVersion <- py.TorchVersion
        let mutable count = 0L
        // per (layout, what): PyTorch and F# medians, and the medians of the per-pair ratios
        let results = Collections.Generic.Dictionary<bool * string, float * float * float * float>()
        for channelsLast in [ false; true ] do
            use fs = new FSharpCase(o, config, channelsLast)
            count <- fs.ParameterCount
            for what in [ "forward"; "train"; "sample" ] do
                let pairCount =
                    match what with
                    | "train" -> o.Train
                    | "sample" -> if channelsLast then 0 else o.Sample
                    | _ -> o.Forward
                let call = what + (if channelsLast then "_cl" else "")
                if pairCount > 0 then
                    for _ in 1 .. (if what = "sample" then 1 else o.Warmup) do
                        py.Call call |> ignore
                        fs.Call what |> ignore
                    let pairs =
                        [| for i in 1..pairCount ->
                               if i % 2 = 1 then
                                   let p = py.Call call
                                   p, fs.Call what
                               else
                                   let f = fs.Call what
                                   py.Call call, f |]
                    let pw = pairs |> Array.map (fun ((w, _), _) -> w)
                    let fw = pairs |> Array.map (fun (_, (w, _)) -> w)
                    let wallRatio = pairs |> Array.map (fun ((pw, _), (fw, _)) -> pw / fw) |> median
                    let cpuRatio = pairs |> Array.map (fun ((_, pc), (_, fc)) -> pc / fc) |> median
                    results.[(channelsLast, what)] <- (median pw, median fw, wallRatio, cpuRatio)
                    printfn
                        "  %s, %s: PyTorch %.3f s, F# %.3f s, PyTorch / F# per pair %.2f (CPU %.2f)"
                        name
                        call
                        (median pw)
                        (median fw)
                        wallRatio
                        cpuRatio
        for label, what in
            [ "forward", "forward"
              "training step", "train"
              sprintf "sampling, %d evaluations" o.Evaluations, "sample" ] do
            let pt, ft, rw, rc = results.[(false, what)]
            let perCall = float o.Batch
            let clColumns =
                match results.TryGetValue((true, what)) with
                | true, (ptCl, ftCl, rwCl, rcCl) -> sprintf "%.3f | %.3f | %.2f (%.2f)" ptCl ftCl rwCl rcCl
                | _ -> "- | - | -"
            rows.Add(
                sprintf
                    "| %s | %d | %s | %.3f | %.3f | **%.2f** (%.2f) | %.1f | %.1f | %s |"
                    name
                    count
                    label
                    pt
                    ft
                    rw
                    rc
                    (perCall / pt)
                    (perCall / ft)
                    clColumns
            )
    line ""
    line (
        sprintf
            "PyTorch %s (Debian python3-torch) against F# on TorchSharp 0.107.0 / libtorch 2.10.0; seconds per call (medians):"
            torchVersion
    )
    line ""
    line
        "| network | parameters | what | PyTorch (s) | F# (s) | F# / PyTorch throughput, wall (CPU) | PyTorch images/s | F# images/s | PyTorch channels-last (s) | F# channels-last (s) | F# / PyTorch, both channels-last, wall (CPU) |"
    line "|---|---|---|---|---|---|---|---|---|---|---|"
    for r in rows do
        line r
    line ""
    line
        "Throughput ratios: medians over pairs of calls of PyTorch's time over F#'s (above 1: F# is faster), by wall clock and, in brackets, by the process's CPU time."
    sb.ToString()
