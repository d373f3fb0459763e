/// `scoresde guidance-sweep`: class-conditional samples of an image U-Net under classifier-free guidance
/// at several weights w, measured by a classifier: how often a sample is classified as the class it was
/// drawn for (quality) and the Frechet distance of its classifier features to the test split (quality
/// and diversity). Writes a markdown table, a plot and one grid per w (a row per class).
module ScoreSde.Cli.GuidanceSweep

open System
open System.CommandLine
open System.Globalization
open System.IO
open System.Text
open TorchSharp
open ScoreSde
open ScoreSde.Cli.ImageConditioning

let private inv (v: float) (format: string) = v.ToString(format, CultureInfo.InvariantCulture)

/// What `guidance-sweep` was asked to do.
type SweepRun =
    { ModelPath: string
      ClassifierPath: string
      DataDir: string
      Weights: float list
      PerClass: int
      BatchSize: int
      ReferenceCount: int option
      Sampler: SamplerRun
      Seed: int64
      GridColumns: int
      Scale: int
      Out: string }

/// One weight's measurements.
type SweepRow = { W: float; Samples: int; Accuracy: float; Frechet: float; Nfe: int; Seconds: float }

/// The guidance weights of a comma-separated list ("0,0.5,1,2,4"): finite, zero or more, distinct.
let parseWeights (text: string) : float list =
    let fail () =
        raise (
            ArgumentException(
                sprintf "--weights must be numbers, zero or more, separated by commas, each once (got '%s')." text,
                "--weights"
            )
        )
    let parts =
        (if isNull text then "" else text).Split(',', StringSplitOptions.TrimEntries ||| StringSplitOptions.RemoveEmptyEntries)
    let ws =
        parts
        |> Array.map (fun p ->
            match Double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture) with
            | true, v when v >= 0.0 && not (Double.IsInfinity v) -> v
            | _ -> fail ())
    if ws.Length = 0 || (Array.distinct ws).Length <> ws.Length then
        fail ()
    List.ofArray ws

/// The file name part for a weight: 0, 0.5, 2 -> "0", "0.5", "2".
let weightName (w: float) = w.ToString("R", CultureInfo.InvariantCulture)

/// The labels of a sweep, in sample order: class 0 `perClass` times, then class 1, ...
let labelsOf (classes: int) (perClass: int) = Array.init (classes * perClass) (fun i -> int64 (i / perClass))

/// Samples of one guidance weight in batches: batch b (samples b * batchSize on) starts from the prior
/// drawn with seed + 2b, the sampler's own noise seeded with seed + 2b + 1 (the same latents for every w).
let private sampleAll (ui: Ui) (c: SweepRun) (info: ModelInfo) (cm: ConditionalModel) (labels: int64[]) (w: float) : Tensor * int * float =
    let shape = info.SampleShape
    let total = labels.Length
    let batches = (total + c.BatchSize - 1) / c.BatchSize
    let watch = Diagnostics.Stopwatch.StartNew()
    let mutable nfe = 0
    use scope = torch.NewDisposeScope()
    let parts =
        Ui.progress ui (sprintf "w = %s: %d samples" (weightName w) total) batches (fun advance ->
            [| for b in 0 .. batches - 1 do
                   let start = b * c.BatchSize
                   let count = min c.BatchSize (total - start)
                   let l = torch.tensor (labels.[start .. start + count - 1], dtype = torch.int64)
                   let model = Guidance.classifierFree cm l w
                   let seed = c.Seed + 2L * int64 b
                   let xT =
                       Sampler.prior info.Sde (Array.append [| int64 count |] shape) info.Dtype torch.CPU (Noise.fromSeed seed torch.CPU)
                   let r = Sampler.sample info.Sde model c.Sampler.Sampling (Noise.fromSeed (seed + 1L) torch.CPU) xT
                   // every batch runs the same schedule: the evaluations per sample
                   nfe <- max nfe r.Nfe
                   advance ()
                   yield r.Samples |])
    let all = torch.cat (parts, 0L)
    Commands.ensureFinite (sprintf "the samples at w = %s" (weightName w)) "" all
    all.MoveToOuterDisposeScope(), nfe, watch.Elapsed.TotalSeconds

/// The markdown table of the rows.
let table (rows: SweepRow list) =
    let sb = StringBuilder()
    sb.AppendLine("| w | samples | classifier accuracy | Frechet distance | guided-model evaluations | seconds |")
    |> ignore
    sb.AppendLine("|---:|---:|---:|---:|---:|---:|") |> ignore
    for r in rows do
        sb.AppendLine(
            sprintf
                "| %s | %d | %s | %s | %d | %s |"
                (weightName r.W)
                r.Samples
                (inv (100.0 * r.Accuracy) "F1" + "%")
                (inv r.Frechet "F2")
                r.Nfe
                (inv r.Seconds "F0")
        )
        |> ignore
    sb.ToString()

/// Accuracy and Frechet distance against w, side by side.
let private plot (path: string) (rows: SweepRow list) =
    let ws = rows |> List.map (fun r -> r.W) |> Array.ofList
    let panel (title: string) (ylabel: string) (values: float[]) (colour: int) =
        let p = new ScottPlot.Plot()
        // accuracy on its whole scale, 0 - 100%
        if colour = 0 then
            p.Axes.SetLimitsY(0.0, 100.0)
        p.Title(title) |> ignore
        let line = p.Add.Scatter(ws, values)
        line.Color <- Plots.colour colour
        line.LineWidth <- 2.0f
        line.MarkerSize <- 8.0f
        p.XLabel("guidance weight w") |> ignore
        p.YLabel(ylabel) |> ignore
        p
    Plots.saveRow
        path
        560
        420
        [ panel "Classifier accuracy (quality)" "accuracy (%)" (rows |> List.map (fun r -> 100.0 * r.Accuracy) |> Array.ofList) 0
          panel
              "Frechet distance to the test split"
              "Frechet distance (classifier features)"
              (rows |> List.map (fun r -> r.Frechet) |> Array.ofList)
              1 ]

/// Run the sweep.
let run (ui: Ui) (c: SweepRun) : int =
    if File.Exists c.Out then
        raise (ArgumentException(sprintf "--out must name a directory, but '%s' is an existing file." c.Out, "--out"))
    let loaded, net, pixels = ImageConditioning.loadUNet c.ModelPath
    use _loaded = loaded
    let info = loaded.Info
    let cm = Conditioning.conditionalOf info net
    let classes = net.Config.Classes
    use classifier = ClassifierFile.load c.ClassifierPath
    let cnet = classifier.Classifier
    let cc = cnet.Config
    if [| int64 cc.Channels; int64 cc.Height; int64 cc.Width |] <> info.SampleShape then
        raise (
            ArgumentException(
                sprintf "--classifier takes %dx%dx%d images; the model draws %A." cc.Channels cc.Height cc.Width info.SampleShape,
                "--classifier"
            )
        )
    if cc.Classes <> classes then
        raise (ArgumentException(sprintf "--classifier has %d classes; the model %d." cc.Classes classes, "--classifier"))
    use reference =
        use all = FashionMnist.load c.DataDir Split.Test
        let n =
            match c.ReferenceCount with
            | Some k -> min (int64 k) all.Count
            | None -> all.Count
        { all with Levels = all.Levels.narrow(0L, 0L, n).clone(); Labels = None }
    if reference.SampleShape <> info.SampleShape then
        raise (
            ArgumentException(
                sprintf "--data-dir: the images are %A but the model draws %A." reference.SampleShape info.SampleShape,
                "--data-dir"
            )
        )
    Ui.info
        ui
        (sprintf
            "guidance sweep: w = %s, %d samples per class of %d classes, %s; model: %s; Frechet distance to %d test images"
            (String.Join(", ", c.Weights |> List.map weightName))
            c.PerClass
            classes
            c.Sampler.Label
            info.Description
            reference.Count)
    use refFeatures = ClassifierTraining.imageFeatures cnet classifier.Pixels 500 reference
    use refStats = Frechet.statistics refFeatures
    let labels = labelsOf classes c.PerClass
    let results =
        [ for w in c.Weights ->
              use scope = torch.NewDisposeScope()
              let samples, nfe, seconds = sampleAll ui c info cm labels w
              // measured as saved images: quantised to 8-bit levels, then in the classifier's range
              let levels = Pixels.toLevels pixels samples
              let set = { Levels = levels; Labels = Some labels; Source = sprintf "w = %s" (weightName w) }
              let accuracy = ClassifierTraining.accuracy cnet classifier.Pixels 500 set
              let features = ClassifierTraining.imageFeatures cnet classifier.Pixels 500 set
              use stats = Frechet.statistics features
              let row =
                  { W = w
                    Samples = labels.Length
                    Accuracy = accuracy
                    Frechet = Frechet.distance stats refStats
                    Nfe = nfe
                    Seconds = seconds }
              Ui.info
                  ui
                  (sprintf
                      "w = %s: accuracy %s, Frechet distance %s (%s s)"
                      (weightName w)
                      (inv (100.0 * accuracy) "F1" + "%")
                      (inv row.Frechet "F2")
                      (inv seconds "F0"))
              // the grid: a row per class, its first GridColumns samples
              let columns = min c.GridColumns c.PerClass
              let rows =
                  [ for k in 0 .. classes - 1 ->
                        { Grid.Levels = levels.narrow (0L, int64 (k * c.PerClass), int64 columns); Grid.Known = None } ]
              row,
              samples.detach().MoveToOuterDisposeScope(),
              rows |> List.map (fun r -> { r with Levels = r.Levels.clone().MoveToOuterDisposeScope() }) ]
    Directory.CreateDirectory c.Out |> ignore
    for row, samples, rows in results do
        use _samples = samples
        DataFile.save (Path.Combine(c.Out, sprintf "samples-w%s.npy" (weightName row.W))) samples
        Grid.write (Path.Combine(c.Out, sprintf "grid-w%s.png" (weightName row.W))) c.Scale rows
        for r in rows do
            r.Levels.Dispose()
    let rows = results |> List.map (fun (r, _, _) -> r)
    let md = table rows
    File.WriteAllText(Path.Combine(c.Out, "guidance.md"), md)
    plot (Path.Combine(c.Out, "guidance.png")) rows
    ui.Out.Write md
    ui.Out.WriteLine(
        sprintf
            "%d samples per w (%d per class), %s; classifier %s; Frechet distance to %d test images; written to %s"
            labels.Length
            c.PerClass
            c.Sampler.Label
            c.ClassifierPath
            reference.Count
            c.Out
    )
    0

/// `guidance-sweep`'s command-line definition; `act` wraps the body (threads, UI, error guard).
let command (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command(
            "guidance-sweep",
            "Class-conditional image samples under classifier-free guidance at several weights w: classifier accuracy and Frechet distance per w (table, plot, grids)"
        )
    let model = Opt.required "--model" "A class-conditional U-Net model directory"
    let classifierOption = Opt.required "--classifier" "Classifier directory written by 'scoresde classifier'"
    let dataDir = dataDirOption "Directory of MNIST-format train/t10k files (the test split is the Frechet reference)"
    let weights = Opt.text "--weights" "Guidance weights w, comma-separated" (Some "0,0.5,1,2,4")
    let perClass = Opt.intAtLeast 1 "--n-per-class" "Samples per class and weight" (Some 10)
    let batch = Opt.intAtLeast 1 "--batch-size" "Samples per sampler run" (Some 100)
    let referenceCount = Opt.intAtLeastOrNone 2 "--reference-n" "Use only the first N test images as the Frechet reference"
    let steps = Opt.intAtLeast 1 "--steps" "Sampler steps (model evaluations of the guided model)" (Some 20)
    let algorithm =
        Opt.choice
            "--algorithm"
            "DPM-Solver++ (data prediction, guided sampling) or DPM-Solver (noise)"
            [ "dpm-solver++"; "dpm-solver" ]
            (Some "dpm-solver++")
    let order = Opt.choice "--order" "Solver order (multistep)" [ "1"; "2"; "3" ] (Some "2")
    let thresholding =
        Opt.choice
            "--thresholding"
            "DPM-Solver++: dynamic (Imagen's, quantile 0.995, at least 1), static (clamp to +-1) or none"
            [ "dynamic"; "static"; "none" ]
            (Some "dynamic")
    let seed = Opt.seed "Seed of the prior draws (batch b: seed + 2b)"
    let columns = Opt.intAtLeast 1 "--grid-columns" "Samples per class shown in the grids" (Some 10)
    let scale = Opt.intAtLeast 1 "--scale" "Screen pixels per image pixel in the grids" (Some 2)
    let out = Opt.required "--out" "Directory for guidance.md, guidance.png, grid-w*.png and samples-w*.npy"
    for o in
        [ model :> Option
          classifierOption
          dataDir
          weights
          perClass
          batch
          referenceCount
          steps
          algorithm
          order
          thresholding
          seed
          columns
          scale
          out ] do
        cmd.Add o
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            let alg =
                if Opt.choiceValue pr algorithm = "dpm-solver" then
                    DpmAlgorithm.DpmSolver
                else
                    DpmAlgorithm.DpmSolverPlusPlus
            let threshold =
                match Opt.choiceValue pr thresholding with
                | "none" -> Thresholding.NoThresholding
                | _ when alg = DpmAlgorithm.DpmSolver ->
                    raise (
                        ArgumentException(
                            "--thresholding applies to DPM-Solver++; give --thresholding none with --algorithm dpm-solver.",
                            "--thresholding"
                        )
                    )
                | "static" -> Thresholding.Static 1.0
                | _ -> Thresholding.Dynamic(0.995, 1.0)
            let settings =
                { DpmSolver.defaults with
                    Algorithm = alg
                    Order = int (Opt.choiceValue pr order)
                    Thresholding = threshold }
            run
                ui
                { ModelPath = pr.GetValue model
                  ClassifierPath = pr.GetValue classifierOption
                  DataDir = pr.GetValue dataDir
                  Weights = parseWeights (pr.GetValue weights)
                  PerClass = pr.GetValue perClass
                  BatchSize = pr.GetValue batch
                  ReferenceCount = Option.ofNullable (pr.GetValue referenceCount)
                  Sampler = Samplers.dpmRunWith settings (pr.GetValue steps) Sampling.dpmSolver.Schedule.Eps
                  Seed = pr.GetValue seed
                  GridColumns = pr.GetValue columns
                  Scale = pr.GetValue scale
                  Out = pr.GetValue out }))
    cmd
