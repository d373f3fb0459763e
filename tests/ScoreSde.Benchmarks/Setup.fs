/// Settings shared by the benchmark classes (set by Program from the command line before BenchmarkDotNet
/// builds its cases; the in-process toolchain runs every case in this process) and small helpers.
module ScoreSde.Benchmarks.Setup

open System
open System.IO
open TorchSharp

/// Intra-op thread counts to measure (`--threads 1,2`; `--quick` measures one thread).
let mutable threadCounts = [| 1; 2 |]

/// Shapes of the step benchmarks (all float32).
let stepShapes = [| "4x3x8x8"; "4x3x64x64"; "16x3x256x256" |]

/// Parse "4x3x64x64".
let parseShape (s: string) = s.Split('x') |> Array.map int64

/// Set libtorch's intra-op thread count (the benchmark parameter).
let setThreads (n: int) =
    ScoreSde.Native.ensureLoaded ()
    torch.set_num_threads n

let private statusField (name: string) =
    File.ReadAllLines("/proc/self/status")
    |> Array.tryFind (fun l -> l.StartsWith(name + ":"))
    |> Option.map (fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) / 1024.0)
    |> Option.defaultValue nan

/// Resident set size of this process in MB.
let rssMb () = statusField "VmRSS"

/// Peak resident set size in MB since the last `resetPeakRss` (or since the start).
let peakRssMb () = statusField "VmHWM"

/// Reset the kernel's peak-RSS mark (writing 5 to /proc/self/clear_refs); false when not permitted.
let resetPeakRss () =
    try
        File.WriteAllText("/proc/self/clear_refs", "5")
        true
    with _ ->
        false

/// Tensors created so far on this thread (inside and outside dispose scopes).
let tensorsCreated () =
    let s = DisposeScopeManager.Statistics
    s.CreatedInScopeCount + s.CreatedOutsideScopeCount
