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

/// The cases written the same way through both APIs: the likelihood (whole runs, and one evaluation of its
/// augmented field: the drift and its divergence at one time per sample), given as functions of the
/// side's API, and the VP scheduler's `StepCorrect`.
let commonCases
    (g: torch.Generator)
    (small: torch.Tensor)
    (large: torch.Tensor)
    (likelihoodExact: unit -> IDisposable)
    (likelihoodHutchinson: unit -> IDisposable)
    (driftAndDivergence: torch.Tensor option -> torch.Tensor -> torch.Tensor -> torch.Tensor * torch.Tensor)
    =
    let scheduler = ScoreSde.CSharp.ScoreSdeVpScheduler()
    scheduler.SetTimesteps(1000)
    let time (n: int64) = torch.full ([| n |], Scalar.op_Implicit 0.5f, dtype = torch.float32)
    let stepCorrect (shape: int64[]) =
        let x = torch.randn (shape, generator = g)
        let out = torch.randn (shape, generator = g)
        let t = time shape.[0]
        fun () ->
            let r = scheduler.StepCorrect(out, x, t, g)
            r.PrevSample.Dispose()
            r.PrevSampleMean.Dispose()
    let evaluation (x: torch.Tensor) (probes: torch.Tensor option) =
        let t = time x.shape.[0]
        fun () ->
            let f, div = driftAndDivergence probes x t
            f.Dispose()
            div.Dispose()
    let hutchinsonProbes = torch.randn ([| large.shape.[0]; 1L; large.numel () / large.shape.[0] |], generator = g)
    [ { Name = "likelihood, exact divergence, Dopri5 held to 100 steps, 64x2"
        Steps = 100
        Run = fun () -> (likelihoodExact ()).Dispose() }
      { Name = "likelihood, Hutchinson (1 probe), RK4 20 steps, 4x3x64x64"
        Steps = 20
        Run = fun () -> (likelihoodHutchinson ()).Dispose() }
      { Name = "likelihood evaluation, exact divergence, 64x2"; Steps = 1; Run = evaluation small None }
      { Name = "likelihood evaluation, Hutchinson (1 probe), 4x3x64x64"
        Steps = 1
        Run = evaluation large (Some hutchinsonProbes) }
      { Name = "VP StepCorrect (facade), 4x3x8x8"; Steps = 1; Run = stepCorrect [| 4L; 3L; 8L; 8L |] }
      { Name = "VP StepCorrect (facade), 4x3x64x64"; Steps = 1; Run = stepCorrect [| 4L; 3L; 64L; 64L |] } ]

/// Time the cases with the command line's blocks and block length (ms); an optional third argument keeps
/// the cases whose name contains it.
let run (side: string) (cases: Case list) =
    let args = fsi.CommandLineArgs
    let only = if args.Length > 3 then cases |> List.filter (fun c -> c.Name.Contains args.[3]) else cases
    timeCases side (int args.[1]) (float args.[2]) only
