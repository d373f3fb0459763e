namespace ScoreSde.Cli

open System
open System.Diagnostics
open System.Globalization
open System.IO
open System.Text.Json.Nodes
open TorchSharp
open ScoreSde

/// Where training data come from.
[<RequireQualifiedAccess>]
type DataSource =
    | BuiltIn of ToyDataset * points: int
    | File of string

/// Settings of `train` (and of the training part of `demo`).
type TrainCommand =
    {
        Source: DataSource
        /// The SDE to train with (stored in the model file).
        Sde: Sde
        Steps: int
        BatchSize: int
        LearningRate: float
        WarmupSteps: int
        Seed: int64
        Hidden: int
        Layers: int
        Weighting: LossWeighting
        EmaDecay: float
        /// Standardise the data per coordinate before training (None: only for data files).
        Standardise: bool option
        Out: string
        LossPlot: string option
    }

/// Settings of `sample`.
type SampleCommand =
    {
        ModelPath: string
        /// The SDE of a TorchScript model (a model directory stores its own; given, it must agree).
        Sde: Sde option
        Sampler: SamplerRun
        Count: int
        Seed: int64
        Out: string
        TimeScale: float
        Shape: int64[]
        /// Known values and class guidance.
        Condition: ConditionSettings
        /// Samples per sampler run (None: all in one batch).
        BatchSize: int option
        /// Noise per sample (seeded by the seed and the sample's index) instead of one stream.
        PerSampleNoise: bool
        /// This machine's part of the run (`--shard K/N`; per-sample noise).
        Shard: Shard option
    }

/// Settings of `likelihood` (and of the held-out bits/dim in `demo`).
type LikelihoodCommand =
    {
        ModelPath: string
        /// The SDE of a TorchScript model (a model directory stores its own; given, it must agree).
        Sde: Sde option
        Data: string
        Rtol: float
        Atol: float
        Eps: float
        /// Hutchinson probes per point; None for the exact divergence.
        Hutchinson: int option
        Seed: int64
        /// Points per ODE solve.
        BatchSize: int
        /// Per-point results (.csv or .npy): log-likelihood in nats and bits/dim.
        Out: string option
        TimeScale: float
        /// Hutchinson probes per point (seeded by the seed and the point's index) instead of one stream.
        PerSampleNoise: bool
        /// This machine's part of the points (`--shard K/N`; per-sample noise).
        Shard: Shard option
    }

/// Settings of `demo`.
type DemoCommand = { Dataset: ToyDataset; Sde: Sde; TrainSteps: int; Count: int; Seed: int64; Out: string }

/// The commands, independent of how their settings were parsed.
[<RequireQualifiedAccess>]
module Commands =
    let internal inv (v: float) (format: string) = v.ToString(format, CultureInfo.InvariantCulture)

    /// A tensor's values as host doubles.
    let internal host (t: Tensor) : float[] =
        use d = t.detach().cpu().to_type(torch.float64).contiguous()
        d.data<float>().ToArray()

    /// Whether every value of x is finite.
    let internal allFinite (x: Tensor) =
        use finite = torch.isfinite x
        use all = finite.all ()
        all.item<bool>()

    /// Raise InvalidOperationException "WHAT hold NaN or infinite values (HINT)." unless every value of
    /// x is finite (the check after a run whose samplers did not check every step).
    let internal ensureFinite (what: string) (hint: string) (x: Tensor) =
        if not (allFinite x) then
            let suffix = if String.IsNullOrEmpty hint then "" else sprintf " (%s)" hint
            raise (InvalidOperationException(sprintf "%s hold NaN or infinite values%s." what suffix))

    /// Samples of a few paths (the first `count` samples) through a sampler, recorded by its observer.
    type internal PathRecorder(start: Tensor, count: int64) =
        let frames = ResizeArray<float[]>()
        let take (x: Tensor) =
            use head = x.narrow (0L, 0L, min count x.shape.[0])
            use d = head.detach().cpu().to_type(torch.float64).contiguous()
            frames.Add(d.data<float>().ToArray())
        do take start
        member _.Observe(x: Tensor) = take x
        /// One cloud per sample: its (x, y) positions over the steps.
        member _.Paths: Cloud list =
            let k = if frames.Count = 0 then 0 else frames.[0].Length / 2
            [ for i in 0 .. k - 1 ->
                  { X = frames |> Seq.map (fun f -> f.[2 * i]) |> Seq.toArray
                    Y = frames |> Seq.map (fun f -> f.[2 * i + 1]) |> Seq.toArray } ]

    /// Training data [N, D] in float32, and a description for metadata.
    let loadData (source: DataSource) (generator: torch.Generator) : Tensor * string =
        match source with
        | DataSource.BuiltIn(ds, n) -> ToyDataset.sample ds n torch.float32 generator, ToyDataset.name ds
        | DataSource.File path -> DataFile.load path torch.float32, Path.GetFullPath path

    /// Train with a progress bar; returns the training result.
    let internal trainWithProgress (ui: Ui) (sde: Sde) (settings: TrainSettings) (net: ScoreNet) (data: Tensor) (g: torch.Generator) =
        Ui.progress ui (sprintf "training (%d steps)" settings.Steps) settings.Steps (fun advance ->
            Training.train sde { settings with Observer = Some(fun _ _ -> advance ()) } net data g)

    /// Mean of the last tenth of the losses (the loss the run ended at).
    let finalLoss (losses: float[]) =
        let k = max 1 (losses.Length / 10)
        losses.[losses.Length - k ..] |> Array.average

    let internal trainSettings (c: TrainCommand) =
        { Training.defaults with
            Steps = c.Steps
            BatchSize = c.BatchSize
            LearningRate = c.LearningRate
            WarmupSteps = c.WarmupSteps
            Weighting = c.Weighting
            EmaDecay = c.EmaDecay }

    let internal trainingMetadata (c: TrainCommand) (dataName: string) (points: int64) (r: TrainResult) =
        let o = JsonObject()
        o.["data"] <- JsonValue.Create dataName
        o.["points"] <- JsonValue.Create points
        o.["steps"] <- JsonValue.Create c.Steps
        o.["batchSize"] <- JsonValue.Create c.BatchSize
        o.["learningRate"] <- JsonValue.Create c.LearningRate
        o.["seed"] <- JsonValue.Create c.Seed
        o.["weighting"] <-
            JsonValue.Create(
                match c.Weighting with
                | LossWeighting.Noise -> "noise"
                | LossWeighting.Likelihood -> "likelihood"
            )
        o.["emaDecay"] <- JsonValue.Create c.EmaDecay
        o.["finalLoss"] <- JsonValue.Create(finalLoss r.Losses)
        o.["seconds"] <- JsonValue.Create r.Seconds
        o

    let private checkPngPath (param: string) (path: string) =
        if not (path.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) then
            raise (ArgumentException(sprintf "%s must name a .png file (got '%s')." param path, param))

    /// `train`: fit a score network to a dataset and save it in the library's format.
    let train (ui: Ui) (c: TrainCommand) : int =
        c.LossPlot |> Option.iter (checkPngPath "--plot")
        if File.Exists c.Out then
            raise (ArgumentException(sprintf "--out must name a model directory, but '%s' is an existing file." c.Out, "--out"))
        // Every output is checked before the work and written under a temporary name, then renamed.
        Outputs.checkWritable "--out" true c.Out
        c.LossPlot |> Option.iter (Outputs.checkWritable "--plot" false)
        let sde = c.Sde
        use g = new torch.Generator(uint64 c.Seed, torch.CPU)
        let raw, dataName = loadData c.Source g
        use raw = raw
        let standardise =
            defaultArg
                c.Standardise
                (match c.Source with
                 | DataSource.File _ -> true
                 | _ -> false)
        let st = if standardise then Some(Standardisation.fit raw) else None
        use data =
            match st with
            | Some s -> Standardisation.apply s raw
            | None -> raw.clone ()
        let dim = int data.shape.[1]
        use net = new ScoreNet({ ScoreNet.defaultConfig dim with Hidden = c.Hidden; Layers = c.Layers }, g)
        Ui.info
            ui
            (sprintf
                "training an MLP score network (%d parameters) on %d points of %s in %d dimensions, %s"
                net.ParameterCount
                data.shape.[0]
                dataName
                dim
                (Sde.describe sde))
        let r = trainWithProgress ui sde (trainSettings c) net data g
        use ema = r.Ema
        // The model is committed last: a failed plot leaves no model directory.
        use staged = new Outputs.StagedFolder(c.Out)
        ModelFile.save staged.Temporary ema sde st (trainingMetadata c dataName data.shape.[0] r)
        c.LossPlot |> Option.iter (fun p -> Plots.save p 800 500 (Plots.lossPlot r.Losses 100))
        staged.Commit()
        ui.Out.WriteLine(
            sprintf
                "trained %d steps in %s s (%s steps/s, %s samples/s); final loss %s; model saved to %s"
                c.Steps
                (inv r.Seconds "F1")
                (inv r.StepsPerSecond "F0")
                (inv (r.StepsPerSecond * float c.BatchSize) "F0")
                (inv (finalLoss r.Losses) "F4")
                c.Out
        )
        0

    /// Reject an `--sde` that disagrees with the SDE a model directory stores.
    let internal checkSde (given: Sde option) (loaded: LoadedModel) (path: string) =
        match given with
        | Some s when s <> loaded.Info.Sde ->
            raise (
                ArgumentException(
                    sprintf
                        "--sde %s does not match the SDE the model at '%s' was trained with (%s); leave --sde out for a model directory."
                        (Sde.name s)
                        path
                        (Sde.describe loaded.Info.Sde),
                    "--sde"
                )
            )
        | _ -> ()

    /// The output kinds `sample` writes.
    let sampleExtensions = [ ".csv"; ".npy"; ".png" ]

    /// Run a sampler with a progress bar, recording the first `paths` samples' trajectories when
    /// `paths` > 0. Returns the result, the seconds taken and the paths.
    let internal runSamplerWith (ui: Ui) (s: SamplerRun) (sde: Sde) (model: Model) (xT: Tensor) (noise: Noise) (paths: int64) =
        let recorder = if paths > 0L then Some(PathRecorder(xT, paths)) else None
        let watch = Stopwatch.StartNew()
        let result =
            Ui.progress ui (sprintf "sampling: %s" s.Label) s.Steps (fun advance ->
                let observer =
                    Some(fun (_: int) (_: float) (x: Tensor) ->
                        (recorder |> Option.iter (fun r -> r.Observe x))
                        advance ())
                Sampler.sample sde model { s.Sampling with Observer = observer } noise xT)
        watch.Stop()
        result, watch.Elapsed.TotalSeconds, (recorder |> Option.map (fun r -> r.Paths) |> Option.defaultValue [])

    /// `runSamplerWith` with the sampler's noise from `seed` (one stream for the batch).
    let internal runSampler (ui: Ui) (s: SamplerRun) (sde: Sde) (model: Model) (xT: Tensor) (seed: int64) (paths: int64) =
        runSamplerWith ui s sde model xT (Noise.fromSeed seed xT.device) paths
