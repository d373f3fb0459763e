/// `scoresde classifier`: train the image classifier on Fashion-MNIST (or any MNIST-format directory),
/// report its test accuracy and save it for measuring samples; `scoresde frechet`: the Frechet distance
/// in its penultimate features between samples (or the training set) and a split of the dataset.
module ScoreSde.Cli.ClassifierCommand

open System
open System.CommandLine
open System.IO
open System.Text.Json.Nodes
open TorchSharp
open ScoreSde

/// What `classifier` was asked to do.
type ClassifierRun =
    { DataDir: string
      Out: string
      Epochs: int
      BatchSize: int
      LearningRate: float
      Seed: int64
      Pixels: PixelRange
      TimeDependent: bool }

let private inv (v: float) (format: string) = v.ToString(format, Globalization.CultureInfo.InvariantCulture)

/// Train, evaluate on the test split, save.
let run (ui: Ui) (c: ClassifierRun) : int =
    if File.Exists c.Out then
        raise (ArgumentException(sprintf "--out must name a directory, but '%s' is an existing file." c.Out, "--out"))
    use train = FashionMnist.load c.DataDir Split.Train
    use test = FashionMnist.load c.DataDir Split.Test
    let classes = int (Array.max train.Labels.Value) + 1
    let shape = train.SampleShape
    let config =
        { ClassifierTraining.defaultConfig (int shape.[0]) (int shape.[1]) (int shape.[2]) classes with
            TimeConditional = c.TimeDependent }
    use g = new torch.Generator(uint64 c.Seed, torch.CPU)
    use net = new Classifier(config, g)
    let sde = Sde.standardVp
    let perEpoch = int (train.Count / int64 (min (int64 c.BatchSize) train.Count))
    let total = perEpoch * c.Epochs
    Ui.info
        ui
        (sprintf
            "training a %sclassifier (%d parameters) on %d images of %s (%d classes), %d epochs of %d steps"
            (if c.TimeDependent then "time-dependent " else "")
            net.ParameterCount
            train.Count
            train.Source
            classes
            c.Epochs
            perEpoch)
    let epochLosses = ResizeArray<float>()
    let watch = Diagnostics.Stopwatch.StartNew()
    let result =
        Ui.progress ui (sprintf "training (%d steps)" total) total (fun advance ->
            let observe (k: int) (loss: float) =
                advance ()
                epochLosses.Add loss
                if (k + 1) % perEpoch = 0 then
                    Ui.info
                        ui
                        (sprintf
                            "epoch %d: mean loss %s, %s s"
                            ((k + 1) / perEpoch)
                            (inv (Seq.average epochLosses) "F4")
                            (inv watch.Elapsed.TotalSeconds "F0"))
                    epochLosses.Clear()
            let settings =
                { ClassifierTraining.defaults with
                    Epochs = c.Epochs
                    BatchSize = c.BatchSize
                    LearningRate = c.LearningRate
                    Pixels = c.Pixels
                    Marginal = (if c.TimeDependent then Some(fun t -> Sde.alphaAt sde t, Sde.sigmaAt sde t) else None)
                    Observer = Some observe }
            ClassifierTraining.train settings net train g)
    let evalWatch = Diagnostics.Stopwatch.StartNew()
    let accuracy = ClassifierTraining.accuracy net c.Pixels 500 test
    let evalSeconds = evalWatch.Elapsed.TotalSeconds
    let meta = JsonObject()
    meta.["data"] <- JsonValue.Create train.Source
    meta.["trainImages"] <- JsonValue.Create train.Count
    meta.["testImages"] <- JsonValue.Create test.Count
    meta.["testAccuracy"] <- JsonValue.Create accuracy
    meta.["epochs"] <- JsonValue.Create c.Epochs
    meta.["batchSize"] <- JsonValue.Create c.BatchSize
    meta.["learningRate"] <- JsonValue.Create c.LearningRate
    meta.["seed"] <- JsonValue.Create c.Seed
    meta.["timeDependent"] <- JsonValue.Create c.TimeDependent
    meta.["seconds"] <- JsonValue.Create result.Seconds
    meta.["threads"] <- JsonValue.Create(torch.get_num_threads ())
    ClassifierFile.save c.Out net c.Pixels meta
    ui.Out.WriteLine(
        sprintf
            "trained %d steps in %s s (%s images/s); test accuracy %s on %d images (%s s); classifier saved to %s"
            total
            (inv result.Seconds "F0")
            (inv (float total * float c.BatchSize / result.Seconds) "F0")
            (inv (100.0 * accuracy) "F2" + "%")
            test.Count
            (inv evalSeconds "F1")
            c.Out
    )
    0

/// What `frechet` was asked to do.
type FrechetRun =
    { Classifier: string; DataDir: string; Samples: string option; Reference: Split; Count: int option }

/// The first `count` images of a set (all when None), as a new set.
let head (count: int option) (set: ImageSet) =
    let n =
        match count with
        | Some c -> min (int64 c) set.Count
        | None -> set.Count
    { set with
        Levels = set.Levels.narrow(0L, 0L, n).clone()
        Labels = set.Labels |> Option.map (fun l -> l.[.. int n - 1]) }

/// Features of samples or of the training split against the reference split.
let frechet (ui: Ui) (c: FrechetRun) : int =
    use loaded = ClassifierFile.load c.Classifier
    let net = loaded.Classifier
    let splitName (s: Split) = if s = Split.Train then "training" else "test"
    let watch = Diagnostics.Stopwatch.StartNew()
    use reference =
        use all = FashionMnist.load c.DataDir c.Reference
        head c.Count all
    let other, otherName =
        match c.Samples with
        | Some path ->
            // samples as `scoresde sample` writes them (floats in the model's pixel range) are
            // quantised to 8-bit levels, as saved images would be; uint8 arrays are levels already
            let a = Npy.read path
            let shape = if a.Shape.Length = 3 then [| a.Shape.[0]; 1L; a.Shape.[1]; a.Shape.[2] |] else a.Shape
            use raw = DataFile.toTensor { a with Shape = shape } torch.float64
            let levels = if a.Dtype = torch.uint8 then raw.to_type torch.uint8 else Pixels.toLevels loaded.Pixels raw
            head c.Count { Levels = levels; Labels = None; Source = path }, path
        | None ->
            let other = if c.Reference = Split.Train then Split.Test else Split.Train
            use all = FashionMnist.load c.DataDir other
            head c.Count all, sprintf "the %s split" (splitName other)
    use other = other
    if other.SampleShape <> reference.SampleShape then
        raise (
            ArgumentException(
                sprintf "--samples holds images of shape %A; the dataset's are %A." other.SampleShape reference.SampleShape,
                "--samples"
            )
        )
    Ui.info ui (sprintf "features of %d + %d images from classifier %s" other.Count reference.Count c.Classifier)
    use fa = ClassifierTraining.imageFeatures net loaded.Pixels 500 other
    use fb = ClassifierTraining.imageFeatures net loaded.Pixels 500 reference
    let d = Frechet.ofFeatures fa fb
    ui.Out.WriteLine(
        sprintf
            "Frechet distance %s between %s (%d images) and the %s split (%d images) in %d classifier features (%s s)"
            (inv d "F3")
            otherName
            other.Count
            (splitName c.Reference)
            reference.Count
            net.Config.Features
            (inv watch.Elapsed.TotalSeconds "F1")
    )
    0

/// `frechet`'s command-line definition.
let frechetCommand (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command(
            "frechet",
            "Frechet distance in a classifier's features between samples (or the training split) and a split of Fashion-MNIST"
        )
    let classifier = Opt.required "--classifier" "Classifier directory written by 'scoresde classifier'"
    let dataDir =
        Opt.text
            "--data-dir"
            "Directory of MNIST-format train/t10k files (apt-get install dataset-fashion-mnist)"
            (Some FashionMnist.defaultDirectory)
    let samples =
        Opt.text
            "--samples"
            "A .npy of images N x C x H x W or N x H x W (floats in the classifier's pixel range, or uint8 levels); default: the other split"
            None
    let reference = Opt.choice "--reference" "The split to compare with" [ "test"; "train" ] (Some "test")
    let count = Opt.intAtLeastOrNone 2 "--n" "Use only the first N images of each set"
    for o in [ classifier :> Option; dataDir; samples; reference; count ] do
        cmd.Add o
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            frechet
                ui
                { Classifier = pr.GetValue classifier
                  DataDir = pr.GetValue dataDir
                  Samples = Option.ofObj (pr.GetValue samples)
                  Reference = (if Opt.choiceValue pr reference = "train" then Split.Train else Split.Test)
                  Count = Option.ofNullable (pr.GetValue count) }))
    cmd

/// The command-line definition; `act` wraps the body (threads, UI, error guard).
let command (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command("classifier", "Train the image classifier on Fashion-MNIST (or MNIST-format files) and report its test accuracy")
    let dataDir =
        Opt.text
            "--data-dir"
            "Directory of MNIST-format train/t10k files (apt-get install dataset-fashion-mnist)"
            (Some FashionMnist.defaultDirectory)
    let out = Opt.required "--out" "Classifier directory to write (config.json and weights.bin)"
    let epochs = Opt.intAtLeast 1 "--epochs" "Passes over the training images" (Some 3)
    let batch = Opt.intAtLeast 1 "--batch-size" "Images per step" (Some ClassifierTraining.defaults.BatchSize)
    let lr = Opt.positive "--lr" "Adam's peak learning rate" (Some ClassifierTraining.defaults.LearningRate)
    let seed = Opt.seed "Seed of the initial weights and the order of the images"
    let pixels = Opt.choice "--pixels" "Pixel range of the inputs" [ "centred"; "zero-one" ] (Some "centred")
    let timeDependent =
        Opt.flag "--time-dependent" "Classify noisy x_t at times t ~ U(0.001, 1) of the VP-SDE (for classifier guidance)"
    for o in [ dataDir :> Option; out; epochs; batch; lr; seed; pixels; timeDependent ] do
        cmd.Add o
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            run
                ui
                { DataDir = pr.GetValue dataDir
                  Out = pr.GetValue out
                  Epochs = pr.GetValue epochs
                  BatchSize = pr.GetValue batch
                  LearningRate = pr.GetValue lr
                  Seed = pr.GetValue seed
                  Pixels = (Pixels.tryParse (pr.GetValue pixels)).Value
                  TimeDependent = pr.GetValue timeDependent }))
    cmd
