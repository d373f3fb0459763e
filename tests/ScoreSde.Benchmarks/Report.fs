/// Tables derived from BenchmarkDotNet's summaries (ratios measured in the same run) and a memory pass
/// over long sampling runs (tensors created per step, managed bytes per step, RSS growth and peak).
module ScoreSde.Benchmarks.Report

open System
open System.IO
open System.Text
open BenchmarkDotNet.Reports
open TorchSharp
open ScoreSde
open ScoreSde.Benchmarks.Setup

/// Median time in milliseconds of each (method, Shape, Threads) case that produced results (the
/// median rather than the mean: robust to the spikes of a machine shared with other work).
let private means (summaries: Summary seq) =
    [ for s in summaries do
          for r in s.Reports do
              if not (isNull r.ResultStatistics) then
                  let c = r.BenchmarkCase
                  let p name = c.Parameters.Items |> Seq.tryFind (fun i -> i.Name = name) |> Option.map (fun i -> string i.Value)
                  yield
                      (c.Descriptor.WorkloadMethod.Name, defaultArg (p "Shape") "", defaultArg (p "Threads") ""),
                      r.ResultStatistics.Median / 1e6 ]
    |> dict

let private tryGet (m: Collections.Generic.IDictionary<_, float>) key =
    match m.TryGetValue key with
    | true, v -> Some v
    | _ -> None

let private fmt (v: float option) = v |> Option.map (fun v -> sprintf "%.4f" v) |> Option.defaultValue "-"
let private ratio (a: float option) (b: float option) =
    match a, b with
    | Some a, Some b when b > 0.0 -> sprintf "%.2f" (a / b)
    | _ -> "-"

/// The step table: each variant in ms and as a multiple of the noise floor of the same run.
let stepTable (summaries: Summary seq) =
    let m = means summaries
    let sb = StringBuilder()
    let line (s: string) = sb.AppendLine s |> ignore
    line
        "| shape | threads | noise floor (ms) | StepPred (ms) | StepPred / floor | core fresh (ms) | core in place (ms) | naive transliteration (ms) | naive / floor | fill, generator (ms) | fill, Noise.fast (ms) |"
    line "|---|---|---|---|---|---|---|---|---|---|---|"
    for shape in stepShapes do
        for th in threadCounts do
            let k name = tryGet m (name, shape, string th)
            let floor = k "NoiseFloor"
            if floor.IsSome then
                line (
                    sprintf
                        "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                        shape
                        th
                        (fmt floor)
                        (fmt (k "StepPred"))
                        (ratio (k "StepPred") floor)
                        (fmt (k "CoreStepFresh"))
                        (fmt (k "CoreStepInPlace"))
                        (fmt (k "NaiveTransliteration"))
                        (ratio (k "NaiveTransliteration") floor)
                        (fmt (k "NoiseFillGenerator"))
                        (fmt (k "NoiseFillFast"))
                )
    sb.ToString()

/// Sampler cases: benchmark name, kernel benchmark, model evaluations per step (one run's total
/// divided by its steps: Dopri5 makes 6 per step and 1 at the start).
let private samplerCases =
    [ "PcEulerMaruyama", Some "EmKernel", 1.0
      "PcEulerMaruyamaFastNoise", Some "EmKernelFastNoise", 1.0
      "PcReverseDiffusionLangevin", Some "RdLangevinKernel", 2.0
      "OdeEuler", Some "OdeEulerKernel", 1.0
      "OdeRk4", Some "OdeRk4Kernel", 4.0
      "OdeDopri5", None, 6.0 + 1.0 / float SamplerCases.steps
      "DpmSolverPlusPlus", None, 1.0 ]

/// The sampler table: time per step with the model's share subtracted, against the step kernel alone.
let samplerTable (summaries: Summary seq) =
    let m = means summaries
    let sb = StringBuilder()
    let line (s: string) = sb.AppendLine s |> ignore
    line (
        sprintf
            "| sampler (%d steps, 4x3x64x64) | threads | run (ms) | model evals / step | per step without the model (ms) | kernel alone (ms) | ratio |"
            SamplerCases.steps
    )
    line "|---|---|---|---|---|---|---|"
    for th in threadCounts do
        let k name = tryGet m (name, "4x3x64x64", string th)
        let model = k "ModelAlone"
        for name, kernel, nfe in samplerCases do
            match k name, model with
            | Some run, Some model ->
                let perStep = (run - nfe * float SamplerCases.steps * model) / float SamplerCases.steps
                let kern = kernel |> Option.bind k
                line (sprintf "| %s | %d | %.3f | %g | %.4f | %s | %s |" name th run nfe perStep (fmt kern) (ratio (Some perStep) kern))
            | _ -> ()
        model
        |> Option.iter (fun v -> line (sprintf "| (model alone, one evaluation) | %d | | | %.4f | | |" th v))
    sb.ToString()

/// Run each sampler for `steps` steps at 4x3x64x64 (one thread) and measure what its loop allocates:
/// tensors created per step beyond the model's own (the analytic model creates exactly one per call),
/// managed bytes per step, RSS growth between the first and last tenth of the run, and the peak RSS
/// above the start.
let memoryTable (steps: int) =
    setThreads 1
    let sde = SamplerCases.sde
    let sb = StringBuilder()
    let line (s: string) = sb.AppendLine s |> ignore
    line (
        sprintf
            "| sampler (%d steps, 4x3x64x64, 1 thread) | tensors created per step beyond the model's | managed bytes per step | RSS growth, first to last tenth (MB) | peak RSS above start (MB) |"
            steps
    )
    line "|---|---|---|---|---|"
    let cases: (string * Sampling) list =
        [ "PC Euler-Maruyama", SamplerCases.pcEm steps
          "PC reverse diffusion + Langevin", SamplerCases.pcRdLangevin steps
          "probability flow, Euler", SamplerCases.ode OdeSolver.Euler steps
          "probability flow, RK4", SamplerCases.ode OdeSolver.Rk4 steps
          "probability flow, Dopri5 (per-sample control, held to the steps)", SamplerCases.dopri5 steps
          "DPM-Solver++ (multistep, order 3)", SamplerCases.dpm steps ]
    for name, sampling in cases do
        use g = new torch.Generator(7UL, torch.CPU)
        let noise = Noise.fromGenerator g
        use xT = torch.randn ([| 4L; 3L; 64L; 64L |], generator = g)
        let mutable calls = 0L
        let model =
            Model.score (fun x _ ->
                calls <- calls + 1L
                x.neg ())
        let tenth = max 1 (steps / 10)
        let rss = ResizeArray()
        let obs: Observer =
            fun i _ _ ->
                if (i + 1) % tenth = 0 then
                    rss.Add(rssMb ())
        GC.Collect()
        let start = rssMb ()
        let peakReset = resetPeakRss ()
        let created0 = tensorsCreated ()
        let bytes0 = GC.GetAllocatedBytesForCurrentThread()
        let r = Sampler.sample sde model { sampling with Observer = Some obs } noise xT
        let bytes = GC.GetAllocatedBytesForCurrentThread() - bytes0
        let created = tensorsCreated () - created0
        r.Samples.Dispose()
        let peak = if peakReset then sprintf "%.1f" (peakRssMb () - start) else "n/a"
        let beyond = float (created - calls) / float steps
        line (sprintf "| %s | %.2f | %.0f | %.1f | %s |" name beyond (float bytes / float steps) (rss.[rss.Count - 1] - rss.[0]) peak)
    sb.ToString()

/// The machine line of the report.
let machine () =
    let cpu =
        try
            File.ReadAllLines("/proc/cpuinfo")
            |> Array.tryFind (fun l -> l.StartsWith "model name")
            |> Option.map (fun l -> l.Substring(l.IndexOf(':') + 1).Trim())
            |> Option.defaultValue "unknown CPU"
        with _ ->
            "unknown CPU"
    sprintf
        "%s, %d logical cores, %s, .NET %s, TorchSharp %s"
        cpu
        Environment.ProcessorCount
        (Runtime.InteropServices.RuntimeInformation.OSDescription)
        (Environment.Version.ToString())
        (typeof<torch>.Assembly.GetName().Version.ToString())
