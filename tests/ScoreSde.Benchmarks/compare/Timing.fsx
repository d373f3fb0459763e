// The timing loop shared by Before.fsx and After.fsx (see run.sh): each case is a function that runs once
// and returns the number of model evaluations; blocks of runs of every case are interleaved, so a slow
// phase of a shared machine weighs on all cases of a process alike.

open System
open System.Diagnostics
open TorchSharp

/// One timed case: its name, its steps (for per-step figures) and one run.
type Case = { Name: string; Steps: int; Run: unit -> unit }

let private median (xs: float seq) =
    let a = Seq.toArray xs |> Array.sort
    if a.Length = 0 then nan
    elif a.Length % 2 = 1 then a.[a.Length / 2]
    else 0.5 * (a.[a.Length / 2 - 1] + a.[a.Length / 2])

/// Time every case: 2 warm-up runs, then `blocks` rounds in which each case runs for about `blockMs`.
/// Prints one tab-separated line per case: side, name, steps, median ms per run, managed bytes per run
/// (this thread, averaged over the measured runs), runs measured.
let timeCases (side: string) (blocks: int) (blockMs: float) (cases: Case list) =
    torch.set_num_threads 1
    let runs = cases |> List.map (fun _ -> ResizeArray<float>())
    let bytes = cases |> List.map (fun _ -> ref 0L)
    let counts = Array.zeroCreate (List.length cases)
    let perBlock =
        cases
        |> List.map (fun c ->
            c.Run()
            c.Run()
            let sw = Stopwatch.StartNew()
            c.Run()
            max 1 (int (blockMs / max 1e-3 sw.Elapsed.TotalMilliseconds)))
    for _ in 1..blocks do
        List.iteri
            (fun i (c: Case) ->
                for _ in 1 .. perBlock.[i] do
                    let b0 = GC.GetAllocatedBytesForCurrentThread()
                    let t0 = Stopwatch.GetTimestamp()
                    c.Run()
                    let t1 = Stopwatch.GetTimestamp()
                    bytes.[i].Value <- bytes.[i].Value + (GC.GetAllocatedBytesForCurrentThread() - b0)
                    counts.[i] <- counts.[i] + 1
                    runs.[i].Add(float (t1 - t0) * 1000.0 / float Stopwatch.Frequency))
            cases
    List.iteri
        (fun i (c: Case) ->
            printfn "%s\t%s\t%d\t%.5f\t%d\t%d" side c.Name c.Steps (median runs.[i]) (bytes.[i].Value / int64 counts.[i]) counts.[i])
        cases
