/// Conditional sampling against exact conditionals (issue 14, item 2): inpainting and a linear condition
/// in an orthonormal basis (each sample its own known values, taken from exact data samples), classifier
/// guidance at scale 1 with the exact classifier, and classifier-free guidance at w = 0 with the exact
/// class-conditional model, for every sampler family and SDE. Run:
/// dotnet run --project tests/ScoreSde.Quality -c Release -- --conditional [--samples N] [--sde vp] [--problem a]
module ScoreSde.Quality.ConditionalBench

open System
open System.Diagnostics
open System.IO
open System.Text
open TorchSharp
open ScoreSde
open ScoreSde.Quality

/// A sampler of the table: its configuration and whether it takes fresh draws of the known part.
type Entry = { Name: string; Sampling: Sampling; Fresh: bool }

let private pcEntry steps =
    { Name = sprintf "PC reverse diffusion + Langevin, %d steps" steps
      Sampling = Samplers.pcSampling Predictor.ReverseDiffusion Samplers.batchLangevin steps
      Fresh = true }

let private dpmEntry name settings steps =
    { Name = sprintf "%s, %d evaluations" name steps
      Sampling = Samplers.dpmSampling settings (Schedule.create TimeGrid.LogSnr steps Samplers.eps) Finish.NoFinish
      Fresh = true }

/// The samplers measured, each family once or twice.
let entries: Entry list =
    let m = DpmMethod.MultiStep
    [ pcEntry 1000
      pcEntry 200
      { Name = "ODE RK4, 25 steps"
        Sampling =
          { Sampling.flow with
              Method = Method.ProbabilityFlow(OdeMethod.FixedStep OdeSolver.Rk4)
              Schedule = Schedule.uniform 25 Samplers.eps }
        Fresh = true }
      { Name = "ODE Dopri5, rtol = atol = 1e-5"; Sampling = Samplers.adaptiveFlow 1e-5; Fresh = false }
      dpmEntry "DPM-Solver-3M" { Samplers.noisePrediction with Method = m; Order = 3 } 20
      dpmEntry "DPM-Solver-3M" { Samplers.noisePrediction with Method = m; Order = 3 } 50
      dpmEntry "DPM-Solver++2M" { Samplers.dataPrediction with Method = m; Order = 2 } 20
      dpmEntry "DPM-Solver++3M" { Samplers.dataPrediction with Method = m; Order = 3 } 20
      { Name = "adaptive DPM-Solver-23, rtol = atol = 0.01"
        Sampling =
          Samplers.dpmSampling
              { Samplers.noisePrediction with
                  Method = DpmMethod.Adaptive { DpmSolver.adaptiveDefaults with Rtol = 0.01; Atol = 0.01 } }
              (Schedule.create TimeGrid.LogSnr 20 Samplers.eps)
              Finish.NoFinish
        Fresh = false } ]

/// A seeded orthonormal D x D matrix (QR of a Gaussian matrix, signs fixed), float64.
let orthonormal (dim: int) (seed: uint64) : Tensor =
    use g = new torch.Generator(seed)
    use a = torch.randn ([| int64 dim; int64 dim |], dtype = torch.float64, generator = g)
    let struct (q, r) = torch.linalg.qr (a)
    use r = r
    use d = r.diagonal().sign()
    use q = q
    q * d.unsqueeze (0L)

/// The known coordinates of a problem: (a) the first of 2, (b) the first 8 of 16.
let knownOf (problem: Mixture.Mixture) = Array.init (problem.Dim / 2) id

/// The class guided towards: (a) mode 0; (b) mode 3 (weight 0.15, std 0.3).
let classOf (problem: Mixture.Mixture) = if problem.Dim = 2 then 0 else 3

/// One measured case: the exact reference, a second exact set (the noise floor) and how to sample.
type Case =
    { Name: string
      Reference: Metric.Reference
      Floor: float
      Model: Model
      Condition: Condition option }

/// Sample with a configuration from the latent and measure: (evaluations, sliced W1).
let measure (sde: Sde) (case: Case) (sampling: Sampling) (seed: int64) (xT: Tensor) =
    let r = Samplers.runSeeded seed sde case.Model { sampling with Condition = case.Condition } xT
    use x = r.Samples
    r.Nfe, case.Reference.Distance x

/// The cases of one SDE and problem with n samples: inpainting, a linear condition, classifier guidance
/// (scale 1) and classifier-free guidance (w = 0). `dirs` are the slicing directions; the caller disposes
/// what is returned with the scope it runs in.
let cases (sde: Sde) (problem: Mixture.Mixture) (n: int) (dirs: Tensor) : Case list =
    let known = knownOf problem
    let maskOf () =
        torch
            .tensor(Array.init problem.Dim (fun i -> if Array.contains i known then 1.0 else 0.0), dtype = torch.float64)
            .reshape([| 1L; int64 problem.Dim |])
    let unconditional = Model.noise (Mixture.noiseModel sde problem)
    let given (name: string) (basis: Tensor option) =
        use g = new torch.Generator(11UL)
        let data = Mixture.sample problem n g
        let y = Condition.coordinates basis data
        use g1 = new torch.Generator(12UL)
        use g2 = new torch.Generator(13UL)
        let reference = Conditional.sampleGiven problem basis known y g1
        use second = Conditional.sampleGiven problem basis known y g2
        let metric = new Metric.Reference(dirs, reference)
        { Name = name
          Reference = metric
          Floor = metric.Distance second
          Model = unconditional
          Condition = Some { Values = y; Mask = maskOf (); Basis = basis; Replacement = None } }
    let classCase (name: string) (model: Model) =
        let k = classOf problem
        use g1 = new torch.Generator(14UL)
        use g2 = new torch.Generator(15UL)
        let reference = Conditional.sampleComponent problem k n g1
        use second = Conditional.sampleComponent problem k n g2
        let metric = new Metric.Reference(dirs, reference)
        { Name = name; Reference = metric; Floor = metric.Distance second; Model = model; Condition = None }
    let label = torch.tensor ([| int64 (classOf problem) |])
    let conditionalModel =
        { Forward = Conditional.conditionalNoise sde problem
          Output = ModelOutput.Noise
          NullLabel = int64 problem.Modes }
    [ given "inpainting" None
      given "linear, orthonormal basis" (Some(orthonormal problem.Dim 21UL))
      classCase "classifier guidance, scale 1" (Guidance.classifier sde unconditional (Conditional.classifier sde problem) label 1.0)
      classCase "classifier-free guidance, w = 0" (Guidance.classifierFree conditionalModel label 0.0) ]

let private cell (nfe: int, d: float) (floor: float) = sprintf "%.4f (%.2fx, %d)" d (d / floor) nfe

/// The full table for the chosen SDEs and problems, written to outDir/conditional-results.md.
let run (sdes: (string * Sde) list) (problems: Mixture.Mixture list) (n: int) (outDir: string) =
    Native.ensureLoaded ()
    torch.set_num_threads 1
    let log = Report.Log()
    let say = log.Say
    say (
        sprintf
            "Sliced Wasserstein-1 (256 directions) between %d conditional samples and %d exact conditional samples, float64, eps %g. Cells: distance (ratio to the noise floor, model evaluations)."
            n
            n
            Samplers.eps
    )
    for sdeName, sde in sdes do
        for problem in problems do
            let clock = Stopwatch.StartNew()
            use scope = torch.NewDisposeScope()
            let dirs = Metric.directions problem.Dim 256 7L
            let cs = cases sde problem n dirs
            let xT =
                use g = new torch.Generator(3UL)
                use z = torch.randn ([| int64 n; int64 problem.Dim |], dtype = torch.float64, generator = g)
                z * Sde.priorStd sde
            say ""
            say (sprintf "### %s, problem (%s): %s" (Sde.describe sde) problem.Name problem.Description)
            say ""
            say (
                sprintf
                    "Known coordinates: the first %d of %d (inpainting: of x; linear: of U x, U a seeded orthonormal matrix); guided class: mode %d."
                    (knownOf problem).Length
                    problem.Dim
                    (classOf problem)
            )
            say ""
            say ("| sampler | replacement | " + String.Join(" | ", cs |> List.map (fun c -> c.Name)) + " |")
            say ("|---|---|" + String.replicate cs.Length "---:|")
            say (
                "| noise floor (two exact sets) | | "
                + String.Join(" | ", cs |> List.map (fun c -> sprintf "%.4f" c.Floor))
                + " |"
            )
            for e in entries do
                let replacements = if e.Fresh then [ Replacement.Fresh; Replacement.FixedLatent ] else [ Replacement.FixedLatent ]
                for r in replacements do
                    let cells =
                        cs
                        |> List.map (fun c ->
                            match c.Condition with
                            | Some cond ->
                                let c' = { c with Condition = Some { cond with Replacement = Some r } }
                                cell (measure sde c' e.Sampling Samplers.pcSeed xT) c.Floor
                            | None when r = Replacement.FixedLatent -> cell (measure sde c e.Sampling Samplers.pcSeed xT) c.Floor
                            | None -> "")
                    let rname =
                        match r with
                        | Replacement.Fresh -> "fresh"
                        | Replacement.FixedLatent -> "fixed latent"
                    say (sprintf "| %s | %s | %s |" e.Name rname (String.Join(" | ", cells)))
                    eprintfn "  [%s %s] %s %s (%.0fs)" sdeName problem.Name e.Name rname clock.Elapsed.TotalSeconds
            for c in cs do
                (c.Reference :> IDisposable).Dispose()
            say ""
            say (sprintf "Time: %.0f s." clock.Elapsed.TotalSeconds)
    Directory.CreateDirectory outDir |> ignore
    let md = Path.Combine(outDir, "conditional-results.md")
    File.WriteAllText(md, log.ToString())
    printfn "wrote %s" md
