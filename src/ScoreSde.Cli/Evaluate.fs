/// `scoresde evaluate`: sample quality of an image model per sampler and evaluation budget, as the
/// Frechet distance in a classifier's penultimate features to the test images (the training images'
/// distance to them is the floor), with a markdown table, a plot and a grid of samples per sampler.
module ScoreSde.Cli.Evaluate

open System
open System.CommandLine
open System.IO
open System.Text
open TorchSharp
open ScoreSde

let private inv = Commands.inv

/// What `evaluate` was asked to do.
type EvaluateRun =
    {
        ModelPath: string
        /// None: only draw the samples and grids.
        ClassifierPath: string option
        DataDir: string
        Samplers: string list
        /// Model evaluations per sample.
        Budgets: int list
        Count: int
        BatchSize: int
        TestCount: int option
        Seed: int64
        Out: string
        /// Samples shown in each grid.
        GridCount: int
    }

/// The samplers `evaluate` offers and what a budget of model evaluations means for each.
let samplerNames = [ "pc"; "sde"; "ode"; "dpm" ]

/// The sampler `name` at `budget` model evaluations per sample: pc, the paper's reverse diffusion +
/// Langevin (2 evaluations a step); sde, reverse diffusion alone (1 a step); ode, the probability
/// flow with Heun's method (2 a step); dpm, the library's DPM-Solver (1 a step, logSNR grid).
let samplerFor (name: string) (budget: int) : SamplerRun =
    match name with
    | "pc" ->
        let p, c =
            match Sampling.pc.Method with
            | Method.PredictorCorrector(p, c) -> p, c
            | _ -> Predictor.ReverseDiffusion, Corrector.langevin 0.16 1
        Samplers.pcRun p c (max 1 (budget / 2)) Sampling.pc.Schedule.Eps
    | "sde" ->
        { Samplers.pcRun Predictor.ReverseDiffusion Corrector.NoCorrector budget Sampling.pc.Schedule.Eps with
            Name = "sde" }
    | "ode" -> Samplers.odeRun OdeSolver.Heun (max 1 (budget / 2)) Sampling.flow.Schedule.Eps
    | "dpm" -> Samplers.dpmRunWith DpmSolver.defaults budget Sampling.dpmSolver.Schedule.Eps
    | other ->
        raise (
            ArgumentException(
                sprintf "--samplers: unknown sampler '%s' (choose from %s)." other (String.Join(", ", samplerNames)),
                "--samplers"
            )
        )

/// One row of the results.
type EvaluationRow = { Sampler: string; Label: string; Budget: int; Nfe: int; Seconds: float; Frechet: float }

/// Samples of a model in batches with per-sample noise, in the model's range [N, C, H, W], the most
/// model evaluations a batch took and the seconds taken.
let sampleBatches (ui: Ui) (loaded: LoadedModel) (run: SamplerRun) (count: int) (batchSize: int) (seed: int64) =
    let info = loaded.Info
    let mutable nfe = 0
    let watch = Diagnostics.Stopwatch.StartNew()
    let parts =
        [ for first, n in Shards.batches count batchSize None ->
              use scope = torch.NewDisposeScope()
              let noise = Noise.perSampleFrom seed first
              let xT = Sampler.prior info.Sde (Array.append [| int64 n |] info.SampleShape) info.Dtype torch.CPU noise
              let result, _, _ = Commands.runSamplerWith ui run info.Sde loaded.Model xT noise 0L
              nfe <- max nfe result.Nfe
              Commands.ensureFinite (sprintf "the %s sampler's samples" run.Label) "" result.Samples
              result.Samples.MoveToOuterDisposeScope() ]
    let samples = torch.cat (List.toArray parts, 0L)
    for p in parts do
        p.Dispose()
    samples, nfe, watch.Elapsed.TotalSeconds

/// The samples of one sampler and budget in the output folder (OUT/samples-NAME-BUDGET.npy, floats in
/// the model's range, and .json: label, evaluations, seconds): reused when present with the right
/// count, else drawn and written (so an interrupted evaluation, or one run before the classifier
/// exists, continues where it stopped).
let private samplesOf (ui: Ui) (c: EvaluateRun) (loaded: LoadedModel) (name: string) (budget: int) (run: SamplerRun) =
    let stem = Path.Combine(c.Out, sprintf "samples-%s-%d" name budget)
    let npy, json = stem + ".npy", stem + ".json"
    let expected = Array.append [| int64 c.Count |] loaded.Info.SampleShape
    let cached =
        if File.Exists npy && File.Exists json then
            let a = Npy.read npy
            let meta = Text.Json.Nodes.JsonNode.Parse(File.ReadAllText json)
            if
                a.Shape = expected
                && meta.["seed"].GetValue<int64>() = c.Seed
                && meta.["batchSize"].GetValue<int>() = c.BatchSize
            then
                Some(DataFile.toTensor a loaded.Info.Dtype, meta.["nfe"].GetValue<int>(), meta.["seconds"].GetValue<float>())
            else
                None
        else
            None
    match cached with
    | Some r ->
        Ui.info ui (sprintf "%s: reusing %s" run.Label npy)
        r
    | None ->
        let samples, nfe, seconds = sampleBatches ui loaded run c.Count c.BatchSize c.Seed
        Outputs.writeFile npy (fun temp -> DataFile.save temp samples)
        let meta = Text.Json.Nodes.JsonObject()
        meta.["label"] <- Text.Json.Nodes.JsonValue.Create run.Label
        meta.["nfe"] <- Text.Json.Nodes.JsonValue.Create nfe
        meta.["seconds"] <- Text.Json.Nodes.JsonValue.Create seconds
        meta.["seed"] <- Text.Json.Nodes.JsonValue.Create c.Seed
        meta.["batchSize"] <- Text.Json.Nodes.JsonValue.Create c.BatchSize
        meta.["threads"] <- Text.Json.Nodes.JsonValue.Create(torch.get_num_threads ())
        Outputs.writeFile json (fun temp -> File.WriteAllText(temp, meta.ToJsonString()))
        samples, nfe, seconds

let private markdown (c: EvaluateRun) (accuracy: float) (testCount: int64) (floor: float) (rows: EvaluationRow list) (modelInfo: string) =
    let sb = StringBuilder()
    let line (s: string) = sb.AppendLine s |> ignore
    line "# Sample quality per sampler and budget"
    line ""
    line (
        sprintf
            "Model: `%s` (%s). Classifier: `%s`, test accuracy %s%%."
            c.ModelPath
            modelInfo
            (defaultArg c.ClassifierPath "")
            (inv (100.0 * accuracy) "F2")
    )
    line (
        sprintf
            "Frechet distance in the classifier's penultimate features between %d samples and the first %d test images; floor: the first %d training images against the same test images. Samples drawn in batches of %d with per-sample noise from seed %d."
            c.Count
            testCount
            c.Count
            c.BatchSize
            c.Seed
    )
    line ""
    line "| sampler | budget | model evaluations | seconds | images/s | Frechet distance | / floor |"
    line "|---|---:|---:|---:|---:|---:|---:|"
    for r in rows do
        line (
            sprintf
                "| %s | %d | %d | %s | %s | %s | %s |"
                r.Label
                r.Budget
                r.Nfe
                (inv r.Seconds "F0")
                (inv (float c.Count / r.Seconds) "F1")
                (inv r.Frechet "F3")
                (inv (r.Frechet / floor) "F1")
        )
    line (sprintf "| training images (floor) | | | | | %s | 1.0 |" (inv floor "F3"))
    sb.ToString()

/// Frechet distance against model evaluations, one line per sampler and the floor dashed, on a
/// logarithmic distance axis (the samplers' distances span orders of magnitude): log10 values are
/// plotted, labelled as the distances, with log-spaced minor ticks.
let private plot (path: string) (floor: float) (rows: EvaluationRow list) =
    let p = new ScottPlot.Plot()
    p.Title("Frechet distance in classifier features vs model evaluations") |> ignore
    let log10 (v: float) = Math.Log10(max v 1e-12)
    rows
    |> List.groupBy (fun r -> r.Sampler)
    |> List.iteri (fun i (name, rs) ->
        let xs = rs |> List.map (fun r -> float r.Nfe) |> List.toArray
        let ys = rs |> List.map (fun r -> log10 r.Frechet) |> List.toArray
        let s = p.Add.Scatter(xs, ys)
        s.Color <- Plots.colour i
        s.LegendText <- name
        s.LineWidth <- 2.0f
        s.MarkerSize <- 7.0f)
    let h = p.Add.HorizontalLine(log10 floor)
    h.Color <- ScottPlot.Color.FromHex("#555555")
    h.LinePattern <- ScottPlot.LinePattern.Dashed
    h.LegendText <- "training images (floor)"
    let ticks = ScottPlot.TickGenerators.NumericAutomatic()
    ticks.MinorTickGenerator <- ScottPlot.TickGenerators.LogMinorTickGenerator()
    ticks.IntegerTicksOnly <- true
    ticks.LabelFormatter <- fun y -> (10.0 ** y).ToString("G3", Globalization.CultureInfo.InvariantCulture)
    p.Axes.Left.TickGenerator <- ticks
    p.XLabel("model evaluations per sample") |> ignore
    p.YLabel("Frechet distance (log scale)") |> ignore
    p.ShowLegend(ScottPlot.Edge.Right) |> ignore
    Outputs.writeFile path (fun temp -> Plots.save temp 800 500 p)

/// Run the evaluation: samples (reused from OUT when there) and grids for every sampler and budget;
/// with a classifier, OUT/evaluation.md and OUT/frechet.png too.
let run (ui: Ui) (c: EvaluateRun) : int =
    if c.Budgets.IsEmpty || c.Budgets |> List.exists (fun b -> b < 1) then
        raise (ArgumentException("--budgets must list positive numbers of model evaluations, e.g. 10,20,50.", "--budgets"))
    let runs = [ for s in c.Samplers -> s, [ for b in c.Budgets -> b, samplerFor s b ] ]
    if File.Exists c.Out then
        raise (ArgumentException(sprintf "--out must name a directory, but '%s' is a file." c.Out, "--out"))
    use loaded = ModelFile.loadNative c.ModelPath
    let range = defaultArg loaded.Info.Pixels PixelRange.Centred
    Directory.CreateDirectory c.Out |> ignore
    // every sampler and budget first (the long part), then the measurements
    let drawn =
        [ for name, budgets in runs do
              for budget, sampler in budgets ->
                  let samples, nfe, seconds = samplesOf ui c loaded name budget sampler
                  use samples = samples
                  let levels = Pixels.toLevels range samples
                  use shown = levels.narrow (0L, 0L, min (int64 c.GridCount) levels.shape.[0])
                  ImageGrid.writeLevels (Path.Combine(c.Out, sprintf "grid-%s-%d.png" name budget)) 2 shown
                  name, budget, sampler, levels, nfe, seconds ]
    try
        match c.ClassifierPath with
        | None ->
            ui.Out.WriteLine(
                sprintf
                    "wrote the samples and grids of %d runs to %s; give --classifier to measure them (the samples are reused)"
                    drawn.Length
                    c.Out
            )
        | Some classifierPath ->
            use classifier = ClassifierFile.load classifierPath
            let net = classifier.Classifier
            use test =
                use all = FashionMnist.load c.DataDir Split.Test
                ClassifierCommand.head c.TestCount all
            use train =
                use all = FashionMnist.load c.DataDir Split.Train
                ClassifierCommand.head (Some c.Count) all
            if test.SampleShape <> loaded.Info.SampleShape then
                raise (
                    ArgumentException(
                        sprintf
                            "--model: its samples are [%s] but the images are [%s]."
                            (String.Join(", ", loaded.Info.SampleShape))
                            (String.Join(", ", test.SampleShape)),
                        "--model"
                    )
                )
            let features (set: ImageSet) = ClassifierTraining.imageFeatures net classifier.Pixels 500 set
            let accuracy = ClassifierTraining.accuracy net classifier.Pixels 500 test
            use testStats =
                use f = features test
                Frechet.statistics f
            let distanceTo (set: ImageSet) =
                use f = features set
                use s = Frechet.statistics f
                Frechet.distance s testStats
            let floor = distanceTo train
            let rows =
                [ for name, budget, sampler, levels, nfe, seconds in drawn ->
                      use set = { Levels = levels.alias (); Labels = None; Source = sampler.Label }
                      let d = distanceTo set
                      Ui.info ui (sprintf "%s: Frechet distance %s" sampler.Label (inv d "F3"))
                      { Sampler = name
                        Label = sampler.Label
                        Budget = budget
                        Nfe = nfe
                        Seconds = seconds
                        Frechet = d } ]
            let text = markdown { c with ClassifierPath = Some classifierPath } accuracy test.Count floor rows loaded.Info.Description
            Outputs.writeFile (Path.Combine(c.Out, "evaluation.md")) (fun temp -> File.WriteAllText(temp, text))
            plot (Path.Combine(c.Out, "frechet.png")) floor rows
            Ui.table
                ui
                (sprintf
                    "Frechet distance of %d samples to %d test images (floor %s; classifier accuracy %s%%)"
                    c.Count
                    test.Count
                    (inv floor "F2")
                    (inv (100.0 * accuracy) "F2"))
                [ "sampler"; "budget"; "evaluations"; "seconds"; "Frechet" ]
                [ for r in rows -> [ r.Label; string r.Budget; string r.Nfe; inv r.Seconds "F0"; inv r.Frechet "F3" ] ]
            ui.Out.WriteLine(sprintf "wrote evaluation.md, frechet.png and %d grids to %s" rows.Length c.Out)
    finally
        for _, _, _, levels, _, _ in drawn do
            levels.Dispose()
    0

let private ints (option: string) (text: string) =
    text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    |> Array.map (fun p ->
        match Int32.TryParse(p, Globalization.NumberStyles.None, Globalization.CultureInfo.InvariantCulture) with
        | true, v when v > 0 -> v
        | _ -> raise (ArgumentException(sprintf "%s must be positive integers separated by commas (got '%s')." option text, option)))
    |> Array.toList

/// `evaluate`'s command-line definition.
let command (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command(
            "evaluate",
            "Sample quality of an image model per sampler and budget: Frechet distance in a classifier's features to the test images, with a table, a plot and sample grids"
        )
    let model = Opt.required "--model" "An image model directory written by 'train'"
    let classifier =
        Opt.text "--classifier" "A classifier directory written by 'scoresde classifier' (without it: only the samples and grids)" None
    let dataDir = ImageEval.dataDirOption ()
    let samplers = Opt.text "--samplers" "Samplers, separated by commas: pc, sde, ode, dpm" (Some "pc,ode,dpm")
    let budgets = Opt.text "--budgets" "Model evaluations per sample, separated by commas" (Some "10,20,50")
    let n = Opt.intAtLeast 2 "--n" "Samples per sampler and budget (and training images for the floor)" (Some 2000)
    let batch = Opt.intAtLeast 1 "--batch-size" "Samples per sampler run" (Some 250)
    let testCount = Opt.intAtLeastOrNone 2 "--test-n" "Use only the first N test images (default: all)"
    let seed = Opt.seed "Seed of the samples' noise (per sample)"
    let grid = Opt.intAtLeast 1 "--grid" "Samples shown in each grid" (Some 64)
    let out = Opt.required "--out" "Folder for evaluation.md, frechet.png and the grids"
    for o in [ model :> Option; classifier; dataDir; samplers; budgets; n; batch; testCount; seed; grid; out ] do
        cmd.Add o
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            run
                ui
                { ModelPath = pr.GetValue model
                  ClassifierPath = Option.ofObj (pr.GetValue classifier)
                  DataDir = pr.GetValue dataDir
                  Samplers =
                    (pr.GetValue samplers).Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
                    |> Array.map (fun s -> s.ToLowerInvariant())
                    |> Array.toList
                  Budgets = ints "--budgets" (pr.GetValue budgets)
                  Count = pr.GetValue n
                  BatchSize = pr.GetValue batch
                  TestCount = Option.ofNullable (pr.GetValue testCount)
                  Seed = pr.GetValue seed
                  Out = pr.GetValue out
                  GridCount = pr.GetValue grid }))
    cmd
