/// Guided sampling (issue 14, item 1): which solver to use with classifier-free guidance, and what the
/// batched 2B evaluation saves. The exact class-conditional model of a mixture is guided at weights w;
/// each solver runs from the same latents as a converged reference of the same guided ODE, and the
/// table gives the RMS distance to the reference's samples (pathwise) and the sliced W1 to them. Run:
/// dotnet run --project tests/ScoreSde.Quality -c Release -- --guided [--sde vp] [--problem a]
module ScoreSde.Quality.GuidedBench

open System
open System.Diagnostics
open System.IO
open System.Text
open TorchSharp
open ScoreSde
open ScoreSde.Quality

let private m = DpmMethod.MultiStep

/// The solvers compared.
let solvers =
    [ "DPM-Solver-2M", { Samplers.noisePrediction with Method = m; Order = 2 }
      "DPM-Solver-3M", { Samplers.noisePrediction with Method = m; Order = 3 }
      "DPM-Solver++2M", { Samplers.dataPrediction with Method = m; Order = 2 }
      "DPM-Solver++3M", { Samplers.dataPrediction with Method = m; Order = 3 }
      "DPM-Solver++2S", { Samplers.dataPrediction with Method = DpmMethod.SingleStep; Order = 2 } ]

let private budgets = [| 10; 15; 20; 25; 50 |]

/// RMS over samples of the Euclidean distance between two sample sets of equal order.
let private pathwise (a: Tensor) (b: Tensor) =
    use d = a.to_type(torch.float64).sub(b.to_type (torch.float64))
    use sq = d.square ()
    use perSample = sq.sum (1L)
    use mean = perSample.mean ()
    Math.Sqrt(mean.item<float>())

/// Time per call of a model (median of alternating blocks), in milliseconds.
let private timeCalls (calls: (string * (unit -> unit)) list) (rounds: int) =
    let block (f: unit -> unit) k =
        let sw = Stopwatch.StartNew()
        for _ in 1..k do
            f ()
        sw.Elapsed.TotalMilliseconds / float k
    for _, f in calls do
        for _ in 1..3 do
            f ()
    let k = max 1 (int (20.0 / max 1e-3 (block (snd calls.Head) 3)))
    let samples = calls |> List.map (fun (n, _) -> n, ResizeArray<float>())
    for _ in 1..rounds do
        for (_, f), (_, acc) in List.zip calls samples do
            acc.Add(block f k)
    samples
    |> List.map (fun (n, acc) ->
        let a = acc.ToArray() |> Array.sort
        n, a.[a.Length / 2])

/// Batched (one call on 2B) against separate (two calls on B) classifier-free guidance with a
/// class-conditional MLP (the library's ScoreNet, 3 x 128, on the input plus a label embedding), one
/// thread, float32.
let timing (say: string -> unit) =
    torch.set_num_threads 1
    use g = new torch.Generator(5UL)
    let dim = 16
    use net = new ScoreNet(ScoreNet.defaultConfig dim, g)
    use embedding = torch.randn ([| 11L; int64 dim |], generator = g)
    let forward (x: Tensor) (t: Tensor) (labels: Tensor) =
        use scope = torch.NewDisposeScope()
        let e = embedding.index_select (0L, labels)
        use one = Scalar.op_Implicit 1.0
        (net.forward (x.add (e, one), t)).MoveToOuterDisposeScope()
    let cm = { Forward = forward; Output = ModelOutput.Noise; NullLabel = 10L }
    say ""
    say "| batch B | batched, one call on 2B (ms) | separate, two calls on B (ms) | separate / batched |"
    say "|---:|---:|---:|---:|"
    for b in [ 16L; 256L; 4096L ] do
        use x = torch.randn ([| b; int64 dim |], generator = g)
        use t = torch.full ([| b |], Scalar.op_Implicit 0.5f)
        use labels = torch.randint (10L, [| b |], generator = g)
        let call (evaluation: GuidanceEvaluation) () =
            let model = Guidance.classifierFreeWith evaluation cm labels 2.0
            use _noGrad = torch.no_grad ()
            use out = model.Forward x t
            ()
        let r =
            timeCalls [ "batched", call GuidanceEvaluation.Batched; "separate", call GuidanceEvaluation.Separate ] 30
            |> dict
        say (sprintf "| %d | %.3f | %.3f | %.2f |" b r.["batched"] r.["separate"] (r.["separate"] / r.["batched"]))

/// The solver comparison for the chosen SDEs and problems, and the timing; written to
/// outDir/guided-results.md.
let run (sdes: (string * Sde) list) (problems: Mixture.Mixture list) (n: int) (outDir: string) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let log = Report.Log()
    let say = log.Say
    say (
        sprintf
            "Classifier-free guidance of the exact class-conditional mixture model, %d samples, float64, eps %g. Cells: RMS distance to the reference's samples from the same latents / sliced W1 to them. Reference: DPM-Solver++2M with 1000 evaluations (its distance to DPM-Solver-3M with 1000 in the header)."
            n
            Samplers.eps
    )
    for sdeName, sde in sdes do
        for problem in problems do
            use scope = torch.NewDisposeScope()
            let k = ConditionalBench.classOf problem
            let cm =
                { Forward = Conditional.conditionalNoise sde problem
                  Output = ModelOutput.Noise
                  NullLabel = int64 problem.Modes }
            let label = torch.tensor ([| int64 k |])
            let xT =
                use g = new torch.Generator(3UL)
                use z = torch.randn ([| int64 n; int64 problem.Dim |], dtype = torch.float64, generator = g)
                z * Sde.priorStd sde
            let dirs = Metric.directions problem.Dim 256 7L
            let run model settings steps =
                let r =
                    Samplers.run
                        sde
                        model
                        (Samplers.dpmSampling settings (Schedule.create TimeGrid.LogSnr steps Samplers.eps) Finish.NoFinish)
                        xT
                r.Samples
            for w in [ 1.0; 3.0; 7.0 ] do
                let guided = Guidance.classifierFree cm label w
                let reference = run guided (snd solvers.[2]) 1000
                let check = run guided (snd solvers.[1]) 1000
                use metric = new Metric.Reference(dirs, reference)
                say ""
                say (
                    sprintf
                        "### %s, problem (%s), class %d, w = %g (reference check: %.2e RMS, %.4f sliced W1)"
                        (Sde.describe sde)
                        problem.Name
                        k
                        w
                        (pathwise check reference)
                        (metric.Distance check)
                )
                say ""
                say ("| solver | " + String.Join(" | ", budgets |> Array.map string) + " |")
                say ("|---|" + String.replicate budgets.Length "---:|")
                for name, settings in solvers do
                    let cells =
                        budgets
                        |> Array.map (fun b ->
                            use x = run guided settings b
                            let finite = x.isfinite().all().item<bool>()
                            if finite then sprintf "%.2e / %.4f" (pathwise x reference) (metric.Distance x) else "not finite")
                    say (sprintf "| %s | %s |" name (String.Join(" | ", cells)))
                eprintfn "  [%s %s] w = %g done" sdeName problem.Name w
    say ""
    say
        "Classifier-free guidance, one call on 2B against two calls on B (class-conditional MLP 3 x 128 on 16-D, float32, one thread, median of 30 alternating blocks):"
    timing say
    Directory.CreateDirectory outDir |> ignore
    let md = Path.Combine(outDir, "guided-results.md")
    File.WriteAllText(md, log.ToString())
    printfn "wrote %s" md
