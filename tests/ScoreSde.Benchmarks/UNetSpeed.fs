/// The U-Net against PyTorch (not BenchmarkDotNet): the F# UNet and its PyTorch twin
/// (python/scoresde_unet.py, run by unet_speed.py with Debian's PyTorch), same configuration, batch
/// and thread count, timed in alternating rounds within one run so that a slow phase of the shared
/// machine weighs on both sides alike. Per round each side does a warm-up, then times single calls of
///   forward: eps = net(x, t), eval mode, no gradient (what a sampler does per evaluation);
///   train:   one denoising score-matching step: t ~ U(eps, 1), z ~ N(0, I), the loss
///            (Training.loss, noise weighting), zero the gradients, backward, Adam, read the loss.
/// Reported: median seconds per call of each side, images per second, and the median over rounds of
/// the F#/PyTorch throughput ratio (PyTorch's time over F#'s: above 1, F# is faster).
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
        Rounds: int
        Batch: int
        Threads: int
        Warmup: int
        Forward: int
        Train: int
        /// (name, JSON overrides of the default 1 x 28 x 28 configuration, the same F# configuration)
        Configs: (string * string * UNetConfig) list
    }

let private baseConfig = UNet.defaultConfig 1 28 28

/// The configurations measured by default: the one comparable to the score-SDE tutorial's network
/// (1.1 M parameters) and the library's default (1.6 M).
let defaultConfigs =
    [ "1 block per level (1.1 M)", """{"blocksPerLevel": 1}""", { baseConfig with BlocksPerLevel = 1 }
      "UNet.defaultConfig (1.6 M)", "{}", baseConfig ]

let defaults =
    { Rounds = 5
      Batch = 64
      Threads = 2
      Warmup = 2
      Forward = 5
      Train = 3
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

/// One round of PyTorch: per-call seconds of forward and train.
let private python (o: Options) (overrides: string) =
    let script = Path.Combine(repoRoot (), "tests", "ScoreSde.Benchmarks", "unet_speed.py")
    let args =
        [ script
          "--config"
          overrides
          "--batch"
          string o.Batch
          "--threads"
          string o.Threads
          "--warmup"
          string o.Warmup
          "--forward"
          string o.Forward
          "--train"
          string o.Train
          "--channels-last" ]
    let psi = ProcessStartInfo("/usr/bin/python3", args, RedirectStandardOutput = true, RedirectStandardError = true)
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEnd()
    let err = p.StandardError.ReadToEnd()
    p.WaitForExit()
    if p.ExitCode <> 0 then
        failwithf "unet_speed.py exited with %d:\n%s" p.ExitCode err
    let root = JsonDocument.Parse(out.Trim().Split('\n') |> Array.last).RootElement
    let times (name: string) = [| for v in root.GetProperty(name).EnumerateArray() -> v.GetDouble() |]
    (times "forward", times "train"), (times "forward_cl", times "train_cl"), root.GetProperty("torch").GetString()

/// One round of F#: per-call seconds of forward and train (a fresh network and optimiser per round,
/// as the Python side builds its own).
let private fsharp (o: Options) (config: UNetConfig) (seed: uint64) (channelsLast: bool) =
    use g = new torch.Generator(seed, torch.CPU)
    use net = new UNet(config, g)
    net.ChannelsLast <- channelsLast
    let parameters = net.parameters () |> Seq.toArray
    use adam = new Adam(parameters)
    let b = int64 o.Batch
    let shape = [| b; int64 config.Channels; int64 config.Height; int64 config.Width |]
    use x0 =
        use u = torch.rand (shape, generator = g)
        Tensors.affine u 2.0 -1.0
    let model (x: Tensor) (t: Tensor) = net.Forward(x, t, null)
    let sde = VpSde.standard
    let forward () =
        use scope = torch.NewDisposeScope()
        use _noGrad = torch.no_grad ()
        let t = torch.rand ([| b |], generator = g)
        net.Forward(x0, t, null) |> ignore
    let train () =
        use scope = torch.NewDisposeScope()
        let u = torch.rand ([| b |], dtype = torch.float64, generator = g)
        let times = Tensors.toHost u |> Array.map (fun v -> 1e-5 + (1.0 - 1e-5) * v)
        let t = torch.tensor (times, dtype = torch.float32)
        let z = torch.randn (shape, generator = g)
        Gradients.zero parameters
        let loss = Training.loss sde LossWeighting.Noise model x0 t z
        loss.backward ()
        adam.Step 2e-4
        loss.item<float32>() |> ignore
    let time (f: unit -> unit) (n: int) (training: bool) =
        net.train training
        for _ in 1 .. o.Warmup do
            f ()
        [| for _ in 1..n ->
               let sw = Stopwatch.StartNew()
               f ()
               sw.Elapsed.TotalSeconds |]
    let fwd = time forward o.Forward false
    let tr = time train o.Train true
    (fwd, tr), net.ParameterCount

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
            "Batch %d, %d threads on both sides; %d rounds alternating PyTorch and F# (each round: %d warm-up calls, then %d forward and %d training steps timed one by one)."
            o.Batch
            o.Threads
            o.Rounds
            o.Warmup
            o.Forward
            o.Train
    )
    line ""
    let rows = ResizeArray<string>()
    let mutable torchVersion = ""
    for name, overrides, config in o.Configs do
        // per side and layout: all forward and train times, and the per-round ratios to PyTorch
        let keys = [ "py"; "pyCl"; "fs"; "fsCl" ]
        let times = keys |> List.map (fun k -> k, (ResizeArray<float>(), ResizeArray<float>())) |> dict
        let ratios =
            [ "fs"; "fsCl"; "fsClVsCl" ]
            |> List.map (fun k -> k, (ResizeArray<float>(), ResizeArray<float>()))
            |> dict
        let mutable count = 0L
        for r in 1 .. o.Rounds do
            // alternate which side goes first
            let runPython () = python o overrides
            let runFSharp () =
                let plain, n = fsharp o config (uint64 r) false
                let cl, _ = fsharp o config (uint64 r) true
                plain, cl, n
            let (py, pyCl, version), (fs, fsCl, n) =
                if r % 2 = 1 then
                    let p = runPython ()
                    p, runFSharp ()
                else
                    let f = runFSharp ()
                    runPython (), f
            torchVersion <- version
            count <- n
            for key, (f, t) in [ "py", py; "pyCl", pyCl; "fs", fs; "fsCl", fsCl ] do
                (fst times.[key]).AddRange f
                (snd times.[key]).AddRange t
            let ratio (a: float[] * float[]) (b: float[] * float[]) = median (fst a) / median (fst b), median (snd a) / median (snd b)
            for key, (rf, rt) in [ "fs", ratio py fs; "fsCl", ratio py fsCl; "fsClVsCl", ratio pyCl fsCl ] do
                (fst ratios.[key]).Add rf
                (snd ratios.[key]).Add rt
            let m (a: float[] * float[]) pick = median (pick a)
            printfn
                "  %s, round %d: forward PyTorch %.3f s (channels-last %.3f), F# %.3f s (%.3f); train PyTorch %.3f s (%.3f), F# %.3f s (%.3f)"
                name
                r
                (m py fst)
                (m pyCl fst)
                (m fs fst)
                (m fsCl fst)
                (m py snd)
                (m pyCl snd)
                (m fs snd)
                (m fsCl snd)
        for what, pick in [ "forward", fst; "training step", snd ] do
            let t key = median (pick times.[key])
            let q key = median (pick ratios.[key])
            rows.Add(
                sprintf
                    "| %s | %d | %s | %.3f | %.3f | **%.2f** | %.3f | %.3f | **%.2f** | %.2f | %.0f | %.0f |"
                    name
                    count
                    what
                    (t "py")
                    (t "fs")
                    (q "fs")
                    (t "pyCl")
                    (t "fsCl")
                    (q "fsCl")
                    (q "fsClVsCl")
                    (float o.Batch / t "py")
                    (float o.Batch / t "fsCl")
            )
    line ""
    line (
        sprintf
            "PyTorch %s (Debian python3-torch) against F# on TorchSharp 0.107.0 / libtorch 2.10.0; seconds per call (medians):"
            torchVersion
    )
    line ""
    line
        "| network | parameters | what | PyTorch | F# | F# / PyTorch throughput | PyTorch channels-last | F# channels-last | F# channels-last / PyTorch | F# channels-last / PyTorch channels-last | PyTorch images/s | F# channels-last images/s |"
    line "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for r in rows do
        line r
    line ""
    line "Ratios are medians over rounds of PyTorch's time over F#'s in the same round (above 1: F# is faster)."
    sb.ToString()
