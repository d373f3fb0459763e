/// Cross tables of the quality benchmark over the three SDEs and both problems: the predictor-corrector
/// samplers at 1000 steps (which predictor and corrector, and which corrector snr, reach the noise floor)
/// and DPM-Solver-3M at 20 evaluations on each grid (which schedule reaches the converged ODE).
module ScoreSde.Quality.Studies

open System
open ScoreSde
open ScoreSde.Quality
open ScoreSde.Quality.Checks

/// One row per configuration, one column per SDE and problem: `cells setup sde` measures a column's rows
/// (the last one may be a reference such as the noise floor, named in `names`).
let private crossTable
    (log: Report.Log)
    (names: string list)
    (sdes: (string * Sde) list)
    (problems: Mixture.Mixture list)
    (samples: int)
    cells
    =
    let columns =
        [ for _, sde in sdes do
              for p in problems -> sde, p ]
    log.Say(
        "| configuration | "
        + (columns
           |> List.map (fun (sde, p) -> sprintf "%s (%s)" (Sde.describe sde) p.Name)
           |> String.concat " | ")
        + " |"
    )
    log.Say("|---|" + (columns |> List.map (fun _ -> "---:|") |> String.concat ""))
    let measured =
        [ for sde, p in columns ->
              use setup = new Setup(p, sde, samples)
              let column: string list = cells setup sde p
              column ]
    names
    |> List.iteri (fun i name -> log.Say(sprintf "| %s | %s |" name (measured |> List.map (fun c -> c.[i]) |> String.concat " | ")))

let private pcSteps = 1000

/// The PC configurations: the paper's VP and sub-VP setting (Euler-Maruyama, no corrector), its VE setting
/// (reverse diffusion + Langevin at snr 0.16), the other predictors alone, and Langevin at lower snr.
let pcConfigs =
    let lang snr = Corrector.langevin snr 1
    [ "Euler-Maruyama", Predictor.EulerMaruyama, Corrector.NoCorrector
      "reverse diffusion", Predictor.ReverseDiffusion, Corrector.NoCorrector
      "ancestral sampling", Predictor.AncestralSampling, Corrector.NoCorrector
      "reverse diffusion + Langevin, snr 0.16", Predictor.ReverseDiffusion, lang 0.16
      "reverse diffusion + Langevin, snr 0.08", Predictor.ReverseDiffusion, lang 0.08
      "reverse diffusion + Langevin, snr 0.04", Predictor.ReverseDiffusion, lang 0.04
      "reverse diffusion + annealed Langevin, snr 0.16", Predictor.ReverseDiffusion, Corrector.annealedLangevin 0.16 1 ]

/// The PC samplers at 1000 steps on each SDE and problem, each the mean of 4 independent draws against
/// the mean of 4 noise floors (as the checks); returns the markdown report.
let pc (sdes: (string * Sde) list) (problems: Mixture.Mixture list) (samples: int) =
    let log = Report.Log()
    log.Say(
        sprintf
            "Predictor-corrector samplers, %d uniform steps to eps 1e-3, last step's mean; sliced W1 (256 directions) between %d generated and %d exact samples, float64. Each cell is the mean of 4 independent draws (latents from generator seeds 200 .. 203, noise seeds %d .. %d) and its ratio to the mean of 4 noise floors (exact sets from seeds 100 .. 103); the check of issue 12 asks for at most 1.5."
            pcSteps
            samples
            samples
            Samplers.pcSeed
            (Samplers.pcSeed + 3L)
    )
    log.Say ""
    let names = (pcConfigs |> List.map (fun (n, _, _) -> n)) @ [ "noise floor, mean of 4" ]
    crossTable log names sdes problems samples (fun setup sde p ->
        let floor = Array.average (setup.Floors 4)
        [ for name, predictor, corrector in pcConfigs ->
              let sampling = Samplers.pcSampling predictor corrector pcSteps
              let d =
                  [| for k in 0L .. 3L -> snd (setup.MeasureIndependent (200L + k) (Samplers.pcSeed + k) sampling) |]
                  |> Array.average
              eprintfn "  [%s %s] %-50s %.4f (%.2fx)" (Sde.name sde) p.Name name d (d / floor)
              sprintf "%.4f (%.2fx)" d (d / floor) ]
        @ [ sprintf "%.4f" floor ])
    log.ToString()

/// DPM-Solver-3M configurations at 20 evaluations: the grids, lower orders in the final steps, the
/// third-order update.
let dpmConfigs (sde: Sde) =
    let ns = Samplers.noisePrediction
    let always = { ns with LowerOrderFinal = LowerOrderFinal.Always }
    let taylor = { ns with ThirdOrder = DpmThirdOrder.TaylorExact }
    let on settings grid = Samplers.dpmSampling settings (Schedule.create grid 20 Samplers.eps) Finish.NoFinish
    let edm settings = Samplers.dpmSampling settings (Schedule.ofTimes (Samplers.edmGrid 7.0 sde 20 Samplers.eps)) Finish.NoFinish
    [ "logSNR grid (the library's default)", on ns TimeGrid.LogSnr
      "logSNR grid, lower orders at the end", on always TimeGrid.LogSnr
      "logSNR grid, Taylor-exact", on taylor TimeGrid.LogSnr
      "time-quadratic grid", on ns TimeGrid.Quadratic
      "time-quadratic grid, lower orders at the end", on always TimeGrid.Quadratic
      "time-uniform grid", on ns TimeGrid.Uniform
      "EDM grid, rho 7", edm ns
      "EDM grid, rho 7, lower orders at the end", edm always
      "DPM-Solver-2M, time-quadratic grid", on { ns with Order = 2 } TimeGrid.Quadratic ]

/// DPM-Solver-3M at 20 evaluations on each grid, against the converged ODE (common latents); returns the
/// markdown report.
let dpmGrids (sdes: (string * Sde) list) (problems: Mixture.Mixture list) (samples: int) =
    let log = Report.Log()
    log.Say(
        sprintf
            "DPM-Solver-3M (noise prediction, published update unless named) at 20 evaluations to eps 1e-3; sliced W1 (256 directions) between %d generated and %d exact samples, float64, and its difference to the converged ODE (DPM-Solver++3M at 1000 evaluations) from the same latents; the check of issue 12 asks for at most 5%%. `Samplers.dpmFor` takes the time-quadratic grid for VP and sub-VP and EDM's grid with lower orders at the end for VE."
            samples
            samples
    )
    log.Say ""
    let names = dpmConfigs Sde.standardVp |> List.map fst
    crossTable log (names @ [ "converged ODE" ]) sdes problems samples (fun setup sde p ->
        let _, converged = setup.Measure Samplers.converged
        [ for name, sampling in dpmConfigs sde ->
              let _, d = setup.Measure sampling
              eprintfn "  [%s %s] %-50s %.4f (%+.1f%%)" (Sde.name sde) p.Name name d (100.0 * (d / converged - 1.0))
              sprintf "%.4f (%+.1f%%)" d (100.0 * (d / converged - 1.0)) ]
        @ [ sprintf "%.4f" converged ])
    log.ToString()
