/// Measuring image models on a dataset: `likelihood --dataset` (test-set bits/dim through the
/// probability-flow ODE, 8-bit uniform dequantisation), `baselines` (the per-pixel categorical and the
/// full-covariance Gaussian on the same images) and `merge` (the shards of a run put back together).
module ScoreSde.Cli.ImageEval

open System
open System.CommandLine
open TorchSharp
open ScoreSde

let private inv = Commands.inv

/// Which images `likelihood --dataset` scores.
type ImageData =
    {
        DataDir: string
        Split: Split
        /// The first N images of the split (all when None).
        Count: int option
        /// TorchScript models: the pixel range they were trained on (a model directory stores its own).
        Pixels: PixelRange option
    }

/// Uniformly dequantised pixels in a model's range: (b + u) / 256 mapped like `Pixels.toModel`, with
/// u ~ U(0, 1) drawn per image from the stream of image first + i of the run (seeded by the seed and
/// the index, like `Noise.perSampleFrom` but its own streams), so an image gets the same noise in
/// any batch or shard.
let dequantise (range: PixelRange) (dtype: torch.ScalarType) (seed: int64) (first: int) (levels: Tensor) : Tensor =
    use scope = torch.NewDisposeScope()
    let n = int levels.shape.[0]
    let u = torch.empty (levels.shape, dtype = dtype)
    for i in 0 .. n - 1 do
        // the dequantisation streams: the per-sample seeds of seed + 1 (the probes use seed's)
        use g = new torch.Generator(Noise.sampleSeed (seed + 1L) (first + i), torch.CPU)
        use row = u.select (0L, int64 i)
        row.uniform_ (0.0, 1.0, g) |> ignore
    use scale = Scalar.op_Implicit (Pixels.width range / 256.0)
    use lower = Scalar.op_Implicit (Pixels.lower range)
    levels.to_type(dtype).add_(u).mul_(scale).add_(lower).MoveToOuterDisposeScope()

let private splitName (s: Split) = if s = Split.Train then "training" else "test"

/// `likelihood --dataset`: bits/dim of a split's images (the first --n), dequantised, through the
/// probability-flow ODE, with the dequantisation offset of the model's pixel range.
let likelihood (ui: Ui) (c: LikelihoodCommand) (d: ImageData) : int =
    c.Out
    |> Option.iter (fun o ->
        let ext = IO.Path.GetExtension(o).ToLowerInvariant()
        if ext <> ".csv" && ext <> ".npy" then
            raise (ArgumentException(sprintf "--out must end in .csv or .npy (got '%s')." o, "--out")))
    use images =
        use all = FashionMnist.load d.DataDir d.Split
        ClassifierCommand.head d.Count all
    let tsOptions =
        { Sde = defaultArg c.Sde Sde.standardVp
          TimeScale = c.TimeScale
          Output = ModelOutput.Noise
          SampleShape = images.SampleShape }
    use loaded = ModelFile.load c.ModelPath tsOptions
    match c.Sde with
    | Some s when s <> loaded.Info.Sde ->
        raise (
            ArgumentException(
                sprintf "--sde %s does not match the SDE the model was trained with (%s)." (Sde.name s) (Sde.describe loaded.Info.Sde),
                "--sde"
            )
        )
    | _ -> ()
    let info = loaded.Info
    if info.SampleShape <> images.SampleShape then
        raise (
            ArgumentException(
                sprintf
                    "--dataset: the model takes samples of shape [%s] but the images are [%s]."
                    (String.Join(", ", info.SampleShape))
                    (String.Join(", ", images.SampleShape)),
                "--dataset"
            )
        )
    let range =
        match info.Pixels, d.Pixels with
        | Some p, Some q when p <> q ->
            raise (
                ArgumentException(
                    sprintf "--pixels %s disagrees with the model's stored range (%s); leave it out." (Pixels.name q) (Pixels.name p),
                    "--pixels"
                )
            )
        | Some p, _ -> p
        | None, Some q -> q
        | None, None ->
            raise (
                ArgumentException(
                    "--pixels: this model does not store its pixel range (a TorchScript file); give --pixels centred or zero-one.",
                    "--pixels"
                )
            )
    Ui.info
        ui
        (sprintf "model: %s; pixels %s, dequantised (+%g bits/dim)" info.Description (Pixels.name range) (Pixels.bitsPerDimOffset range))
    let settings = Likelihoods.likelihoodSettings c.Rtol c.Atol c.Eps c.Hutchinson
    let batches, noiseOf = Likelihoods.likelihoodBatches { c with PerSampleNoise = true } (int images.Count)
    let batch (first: int) (count: int) =
        use levels = images.Levels.narrow (0L, int64 first, int64 count)
        dequantise range info.Dtype c.Seed first levels
    let logp, nfe, seconds = Likelihoods.logLikelihoodsOf ui info.Sde loaded.Model settings batches noiseOf batch 0.0
    let dim = float (Array.fold (*) 1L images.SampleShape)
    let offset = Pixels.bitsPerDimOffset range
    let bpd = logp |> Array.map (fun v -> -v / (dim * Math.Log 2.0) + offset)
    let what = sprintf "the %s split of %s (dequantised)" (splitName d.Split) d.DataDir
    Likelihoods.reportLikelihoods ui c batches logp bpd nfe seconds what
    0

/// What `baselines` was asked to do.
type BaselinesRun = { DataDir: string; Count: int option; Smoothing: float }

/// `baselines`: the two reference models, fitted to the training split and scored on the first N
/// test images, mean bits/dim and standard error.
let baselines (ui: Ui) (c: BaselinesRun) : int =
    let watch = Diagnostics.Stopwatch.StartNew()
    use train = FashionMnist.load c.DataDir Split.Train
    use test =
        use all = FashionMnist.load c.DataDir Split.Test
        ClassifierCommand.head c.Count all
    Ui.info ui (sprintf "fitting to %d training images, scoring %d test images" train.Count test.Count)
    let categorical = PixelBaselines.categorical c.Smoothing train.Levels test.Levels
    let gaussian = PixelBaselines.gaussian train.Levels test.Levels
    let line (name: string) (v: float[]) =
        let m, se = Likelihoods.meanAndError v
        ui.Out.WriteLine(sprintf "%s: %s bits/dim (+- %s standard error)" name (inv m "F4") (inv se "F4"))
    ui.Out.WriteLine(sprintf "baselines fitted to the %d training images of %s, scored on %d test images:" train.Count c.DataDir test.Count)
    line (sprintf "independent per-pixel categorical (additive smoothing %g)" c.Smoothing) categorical
    line "full-covariance Gaussian on dequantised pixels (exact expectation over the noise)" gaussian
    Ui.info ui (sprintf "%s s" (inv watch.Elapsed.TotalSeconds "F1"))
    0

/// The `--data-dir` option of the image commands.
let dataDirOption () =
    Opt.text
        "--data-dir"
        "Directory of MNIST-format train/t10k files (apt-get install dataset-fashion-mnist)"
        (Some FashionMnist.defaultDirectory)

/// `baselines`' command-line definition.
let baselinesCommand (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command(
            "baselines",
            "Bits/dim of two reference models on the test images: independent per-pixel categoricals and a full-covariance Gaussian on dequantised pixels, fitted to the training images"
        )
    let dataset = Opt.choice "--dataset" "The image dataset" [ "fashion-mnist" ] (Some "fashion-mnist")
    let dataDir = dataDirOption ()
    let count = Opt.intAtLeastOrNone 1 "--n" "Score only the first N test images (default: all)"
    let smoothing =
        Opt.positive "--smoothing" "The categorical's additive smoothing: (count + a) / (N + 256 a); 1 is Laplace's rule" (Some 1.0)
    for o in [ dataset :> Option; dataDir; count; smoothing ] do
        cmd.Add o
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            baselines
                ui
                { DataDir = pr.GetValue dataDir
                  Count = Option.ofNullable (pr.GetValue count)
                  Smoothing = pr.GetValue smoothing }))
    cmd

/// `merge`'s command-line definition: the shards' outputs concatenated in order.
let mergeCommand (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command(
            "merge",
            "Concatenate the outputs of the shards of a 'sample' or 'likelihood' run (--shard K/N), in order: .npy along the first axis, .csv line by line"
        )
    let out = Argument<string>("out", Description = "The merged file (.npy or .csv)")
    let inputs = Argument<string[]>("inputs", Description = "The shards' files, shard 0 first", Arity = ArgumentArity.OneOrMore)
    cmd.Add out
    cmd.Add inputs
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            let files = pr.GetValue inputs |> Array.toList
            let target = pr.GetValue out
            let rows = Shards.merge target files
            ui.Out.WriteLine(sprintf "merged %d files, %d rows, into %s" files.Length rows target)
            // the shards of a likelihood run: the whole run's mean bits/dim
            let lines =
                if target.EndsWith(".csv", StringComparison.OrdinalIgnoreCase) then
                    IO.File.ReadAllLines target
                else
                    [||]
            match lines |> Array.tryHead |> Option.map (fun h -> Array.IndexOf(h.Split(','), "bits_per_dim")) with
            | Some column when column >= 0 ->
                let bits =
                    lines.[1..]
                    |> Array.filter (fun l -> l.Trim() <> "")
                    |> Array.map (fun l -> Double.Parse(l.Split(',').[column], Globalization.CultureInfo.InvariantCulture))
                let m, se = Likelihoods.meanAndError bits
                ui.Out.WriteLine(sprintf "%s bits/dim (+- %s standard error) over %d points" (inv m "F4") (inv se "F4") bits.Length)
            | _ -> ()
            0))
    cmd
