/// The cost of `Sampling.CheckFinite` (the non-finite check of every model output and of the state
/// after every step), measured in alternation: blocks of whole runs with the check on and with it off,
/// interleaved, so that a slow phase of the shared machine weighs on both sides alike. The model is the
/// samplers' analytic one (one tensor operation per evaluation, as cheap as a model gets), so the
/// ratio is an upper bound of what a real network sees.
module ScoreSde.Benchmarks.FiniteCheck

open System.Diagnostics
open System.Text
open TorchSharp
open ScoreSde
open ScoreSde.Benchmarks.Setup

let private median = Paired.median
let private block = Paired.block

/// The samplers measured (20 steps each; Dopri5 held to 20 steps as in SamplerBenchmarks).
let private cases =
    [ "PC, Euler-Maruyama", SamplerCases.pcEm 20
      "PC, reverse diffusion + Langevin", SamplerCases.pcRdLangevin 20
      "flow, RK4", SamplerCases.ode OdeSolver.Rk4 20
      "flow, Dopri5", SamplerCases.dopri5 20
      "DPM-Solver++3M", SamplerCases.dpm 20 ]

/// Median milliseconds per run with the check on and off, and the median of the per-round ratios.
let private measure (shape: int64[]) (sampling: Sampling) (rounds: int) =
    use g = new torch.Generator(0UL, torch.CPU)
    let noise = Noise.fromGenerator g
    use xT = torch.randn (shape, generator = g)
    let run (check: bool) () =
        let r = Sampler.sample SamplerCases.sde SamplerCases.model { sampling with CheckFinite = check } noise xT
        r.Samples.Dispose()
    for _ in 1..3 do
        run true ()
        run false ()
    // blocks of about 50 ms
    let k = max 1 (int (50.0 / max 1e-3 (block (run true) 2)))
    let on, off, ratios = ResizeArray(), ResizeArray(), ResizeArray()
    for i in 1..rounds do
        // alternate which side goes first
        let a, b =
            if i % 2 = 0 then
                let a = block (run true) k
                a, block (run false) k
            else
                let b = block (run false) k
                block (run true) k, b
        on.Add a
        off.Add b
        ratios.Add(a / b)
    median on, median off, median ratios, k

/// The table over the cases, shapes and thread counts.
let table (rounds: int) (shapes: string list) =
    let sb = StringBuilder()
    let line (s: string) = sb.AppendLine s |> ignore
    line
        "| sampler (20 steps) | shape | threads | check on (ms/run) | check off (ms/run) | median of per-round ratios | runs per block, rounds |"
    line "|---|---|---|---|---|---|---|"
    for th in threadCounts do
        setThreads th
        for shape in shapes do
            for name, sampling in cases do
                let on, off, r, k = measure (parseShape shape) sampling rounds
                line (sprintf "| %s | %s | %d | %.3f | %.3f | %.3f | %d, %d |" name shape th on off r k rounds)
    sb.ToString()

/// The scan alone against libtorch's `isfinite(x).all()` and against one element-wise operation
/// (`neg`, the analytic model), microseconds per call (median of blocks).
let scanTable () =
    let sb = StringBuilder()
    let line (s: string) = sb.AppendLine s |> ignore
    line "| shape | Tensors.allFinite (us) | isfinite(x).all() (us) | x.neg() (us) |"
    line "|---|---|---|---|"
    setThreads 1
    for shape in [ "4x2"; "256x2"; "4x3x64x64"; "16x3x64x64" ] do
        use x = torch.randn (parseShape shape)
        // microseconds per call: the median of 15 blocks of 200 calls after 20 warm-up calls
        let time (f: unit -> unit) =
            for _ in 1..20 do
                f ()
            median [ for _ in 1..15 -> 1000.0 * block f 200 ]
        let ours = time (fun () -> Tensors.allFinite x |> ignore)
        let native =
            time (fun () ->
                use f = torch.isfinite (x)
                use a = f.all ()
                a.item<bool>() |> ignore)
        let neg =
            time (fun () ->
                use n = x.neg ()
                ())
        line (sprintf "| %s | %.2f | %.2f | %.2f |" shape ours native neg)
    sb.ToString()
