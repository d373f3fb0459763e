/// `StepPred` against the noise floor measured in alternation: blocks of floor calls and blocks of
/// `StepPred` calls interleaved over a few seconds, so that a slow phase of a shared machine (seen here
/// as the same code running 1.5x slower for minutes) weighs on both sides of the ratio alike.
/// BenchmarkDotNet runs each case to completion before the next, so its ratios between cases can
/// straddle such a phase; this table complements them.
module ScoreSde.Benchmarks.Paired

open System
open System.Diagnostics
open System.Text
open TorchSharp
open ScoreSde.Benchmarks.Setup

/// The median of a sample (NaN when empty).
let median (xs: float seq) =
    let a = Seq.toArray xs |> Array.sort
    if a.Length = 0 then nan
    elif a.Length % 2 = 1 then a.[a.Length / 2]
    else 0.5 * (a.[a.Length / 2 - 1] + a.[a.Length / 2])

/// Milliseconds per call of `f` over a block of k calls.
let block (f: unit -> unit) (k: int) =
    let sw = Stopwatch.StartNew()
    for _ in 1..k do
        f ()
    sw.Elapsed.TotalMilliseconds / float k

/// Median per-call times of the floor and of StepPred over `rounds` alternating blocks, and the median
/// of the per-round ratios.
let private measure (shape: int64[]) (rounds: int) =
    use g = new torch.Generator(0UL, torch.CPU)
    use x = torch.randn (shape, generator = g)
    use out = torch.randn (shape, generator = g)
    use t = torch.full ([| shape.[0] |], Scalar.op_Implicit 0.5f, dtype = torch.float32)
    let scheduler = ScoreSde.CSharp.ScoreSdeVpScheduler()
    scheduler.SetTimesteps(1000)
    let floor () =
        use z = torch.randn (shape, generator = g)
        ()
    let step () =
        let r = scheduler.StepPred(out, x, t, g)
        r.PrevSample.Dispose()
        r.PrevSampleMean.Dispose()
    // warm-up, and a block size of about 20 ms
    for _ in 1..5 do
        floor ()
        step ()
    let k = max 1 (int (20.0 / max 1e-4 (block step 5)))
    let floors, steps, ratios = ResizeArray(), ResizeArray(), ResizeArray()
    for _ in 1..rounds do
        let a = block floor k
        let b = block step k
        floors.Add a
        steps.Add b
        ratios.Add(b / a)
    median floors, median steps, median ratios, k

/// The paired table for every step shape and thread count.
let table (rounds: int) =
    let sb = StringBuilder()
    let line (s: string) = sb.AppendLine s |> ignore
    line (sprintf "| shape | threads | noise floor (ms) | StepPred (ms) | median of per-round ratios | calls per block, rounds |")
    line "|---|---|---|---|---|---|"
    for th in threadCounts do
        setThreads th
        for shape in stepShapes do
            let f, s, r, k = measure (parseShape shape) rounds
            line (sprintf "| %s | %d | %.4f | %.4f | %.2f | %d, %d |" shape th f s r k rounds)
    sb.ToString()
