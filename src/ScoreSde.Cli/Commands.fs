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
    let private checkSde (given: Sde option) (loaded: LoadedModel) (path: string) =
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

    /// Log-likelihoods of the batches (first item, count) of a run, with a progress bar: `batch first
    /// count` makes a batch's points in the model's space and `noiseOf first` its Hutchinson noise;
    /// `correction` is added to every log p. Per-point log p in nats, the model evaluations and the
    /// seconds taken.
    let logLikelihoodsOf
        (ui: Ui)
        (sde: Sde)
        (model: Model)
        (settings: LikelihoodSettings)
        (batches: (int * int) list)
        (noiseOf: int -> Noise)
        (batch: int -> int -> Tensor)
        (correction: float)
        : float[] * int * float =
        let logp = ResizeArray<float>()
        let mutable nfe = 0
        let watch = Stopwatch.StartNew()
        let total = batches |> List.sumBy snd
        Ui.progress ui (sprintf "likelihood of %d points" total) batches.Length (fun advance ->
            for first, count in batches do
                use scope = torch.NewDisposeScope()
                let x = batch first count
                use r = Likelihood.compute sde model settings (noiseOf first) x
                logp.AddRange(host r.LogLikelihood |> Array.map (fun v -> v + correction))
                nfe <- nfe + r.Nfe
                advance ())
        logp.ToArray(), nfe, watch.Elapsed.TotalSeconds

    /// Log-likelihoods of data points [N, D] (data space) in batches, with a progress bar: per-point
    /// log p in nats and bits/dim, the model evaluations and the seconds taken. A standardised model
    /// is evaluated on standardised points and corrected by the map's log-determinant.
    let logLikelihoods
        (ui: Ui)
        (sde: Sde)
        (model: Model)
        (st: Standardisation option)
        (settings: LikelihoodSettings)
        (noise: Noise)
        (batchSize: int)
        (points: Tensor)
        : float[] * float[] * int * float =
        let dim = float points.shape.[1]
        let batch (first: int) (count: int) =
            let chunk = points.narrow (0L, int64 first, int64 count)
            match st with
            | Some s -> Standardisation.apply s chunk
            | None -> chunk
        let correction = st |> Option.map Standardisation.logDetJacobian |> Option.defaultValue 0.0
        let batches = Shards.batches (int points.shape.[0]) batchSize None
        let logp, nfe, seconds = logLikelihoodsOf ui sde model settings batches (fun _ -> noise) batch correction
        logp, logp |> Array.map (fun v -> -v / (dim * Math.Log 2.0)), nfe, seconds

    /// Mean and standard error of the mean.
    let meanAndError (v: float[]) =
        let m = Array.average v
        let var = if v.Length > 1 then (v |> Array.sumBy (fun x -> (x - m) ** 2.0)) / float (v.Length - 1) else 0.0
        m, sqrt (var / float v.Length)

    let internal likelihoodSettings (rtol: float) (atol: float) (eps: float) (hutchinson: int option) =
        { Likelihood.defaults with
            Method = OdeMethod.dopri5 rtol atol
            Schedule = { Likelihood.defaults.Schedule with Eps = eps }
            Divergence =
                match hutchinson with
                | Some k -> Divergence.Hutchinson(Probe.Rademacher, k)
                | None -> Divergence.Exact }

    /// The batches of `n` points this run computes (this shard's) and each batch's Hutchinson noise:
    /// one stream for the run, or per point (`--noise per-sample`, implied by `--shard`).
    let likelihoodBatches (c: LikelihoodCommand) (n: int) : (int * int) list * (int -> Noise) =
        let batches = Shards.batches n c.BatchSize c.Shard
        if batches.IsEmpty then
            raise (
                ArgumentException(
                    sprintf
                        "--shard %d/%d gets no batch: %d points in batches of %d; give a smaller --batch-size or fewer shards."
                        c.Shard.Value.Index
                        c.Shard.Value.Count
                        n
                        c.BatchSize,
                    "--shard"
                )
            )
        if c.PerSampleNoise || c.Shard.IsSome then
            batches, (fun first -> Noise.perSampleFrom c.Seed first)
        else
            let stream = Noise.fromSeed c.Seed torch.CPU
            batches, (fun _ -> stream)

    /// Write the per-point results (`--out`) and print the mean bits/dim with its standard error.
    let reportLikelihoods
        (ui: Ui)
        (c: LikelihoodCommand)
        (batches: (int * int) list)
        (logp: float[])
        (bpd: float[])
        (nfe: int)
        (seconds: float)
        (what: string)
        =
        c.Out
        |> Option.iter (fun o ->
            let values = Array.init logp.Length (fun i -> [| logp.[i]; bpd.[i] |]) |> Array.concat
            let table = { Shape = [| int64 logp.Length; 2L |]; Values = values; Dtype = torch.float64 }
            Shards.writeAtomically o (fun temp ->
                if o.EndsWith(".npy", StringComparison.OrdinalIgnoreCase) then
                    Npy.write temp table
                else
                    Csv.write temp (Some [| "log_likelihood"; "bits_per_dim" |]) table))
        let m, se = meanAndError bpd
        let ml, _ = meanAndError logp
        let first = fst batches.Head
        ui.Out.WriteLine(
            sprintf
                "%s bits/dim (+- %s standard error) over %d points of %s%s; mean log-likelihood %s nats; %d model evaluations, %s s"
                (inv m "F4")
                (inv se "F4")
                logp.Length
                what
                (match c.Shard with
                 | Some sh -> sprintf " (%s: points %d..%d)" (Shards.describe sh) first (first + logp.Length - 1)
                 | None -> "")
                (inv ml "F4")
                nfe
                (inv seconds "F1")
        )

    /// `likelihood`: bits/dim of a data file under a model, through the probability-flow ODE.
    let likelihood (ui: Ui) (c: LikelihoodCommand) : int =
        c.Out
        |> Option.iter (fun o ->
            let ext = Path.GetExtension(o).ToLowerInvariant()
            if ext <> ".csv" && ext <> ".npy" then
                raise (ArgumentException(sprintf "--out must end in .csv or .npy (got '%s')." o, "--out"))
            Outputs.checkWritable "--out" false o)
        use data = DataFile.load c.Data torch.float64
        let dim = data.shape.[1]
        let tsOptions =
            { Sde = defaultArg c.Sde Sde.standardVp
              TimeScale = c.TimeScale
              Output = ModelOutput.Noise
              SampleShape = [| dim |] }
        use loaded = ModelFile.load c.ModelPath tsOptions
        checkSde c.Sde loaded c.ModelPath
        let info = loaded.Info
        if info.SampleShape <> [| dim |] then
            raise (
                ArgumentException(
                    sprintf
                        "--data: the model takes points of shape [%s] but %s holds %d coordinates per point."
                        (String.Join(", ", info.SampleShape))
                        c.Data
                        dim,
                    "--data"
                )
            )
        Ui.info ui (sprintf "model: %s" info.Description)
        use points = data.to_type (info.Dtype)
        let settings = likelihoodSettings c.Rtol c.Atol c.Eps c.Hutchinson
        let st = info.Standardisation
        let batch (first: int) (count: int) =
            let chunk = points.narrow (0L, int64 first, int64 count)
            match st with
            | Some s -> Standardisation.apply s chunk
            | None -> chunk
        let batches, noiseOf = likelihoodBatches c (int points.shape.[0])
        let correction = st |> Option.map Standardisation.logDetJacobian |> Option.defaultValue 0.0
        let logp, nfe, seconds = logLikelihoodsOf ui info.Sde loaded.Model settings batches noiseOf batch correction
        let bpd = logp |> Array.map (fun v -> -v / (float dim * Math.Log 2.0))
        reportLikelihoods ui c batches logp bpd nfe seconds c.Data
        0

    /// `sample`: draw samples from a saved or TorchScript model and write them to a file.
    let sample (ui: Ui) (c: SampleCommand) : int =
        let ext = Path.GetExtension(c.Out).ToLowerInvariant()
        if not (List.contains ext sampleExtensions) then
            raise (ArgumentException(sprintf "--out must end in %s (got '%s')." (String.Join(", ", sampleExtensions)) c.Out, "--out"))
        Outputs.checkWritable "--out" false c.Out
        let tsOptions =
            { Sde = defaultArg c.Sde Sde.standardVp
              TimeScale = c.TimeScale
              Output = ModelOutput.Noise
              SampleShape = c.Shape }
        // a class-conditional TorchScript model (--classes), guided by --label / --guidance; else a model
        // directory or a TorchScript forward(x, t)
        let model, info, owner, labels, conditional =
            match c.Condition.Classes with
            | Some classes ->
                let cm, owner = Conditioning.loadConditionalTorchScript c.ModelPath c.TimeScale ModelOutput.Noise classes
                try
                    let model, labels = Conditioning.guided c.Condition cm classes c.Count
                    let info =
                        { Sde = tsOptions.Sde
                          TimeScale = c.TimeScale
                          Output = ModelOutput.Noise
                          SampleShape = c.Shape
                          Dtype = torch.float32
                          Standardisation = None
                          Pixels = None
                          Description =
                            sprintf
                                "class-conditional TorchScript %s, label %d, guidance %g"
                                (Path.GetFileName c.ModelPath)
                                c.Condition.Label.Value
                                (defaultArg c.Condition.Guidance 0.0) }
                    model, info, owner, Some labels, Some(cm, classes)
                with _ ->
                    owner.Dispose()
                    reraise ()
            | None ->
                if c.Condition.Label.IsSome || c.Condition.Guidance.IsSome then
                    raise (
                        ArgumentException(
                            "--label and --guidance need a class-conditional model: a TorchScript file whose forward takes (x, t, labels), with --classes K (K, the number of classes, is its null label).",
                            "--label"
                        )
                    )
                let loaded = ModelFile.load c.ModelPath tsOptions
                try
                    checkSde c.Sde loaded c.ModelPath
                with _ ->
                    (loaded :> IDisposable).Dispose()
                    reraise ()
                loaded.Model, loaded.Info, (loaded :> IDisposable), None, None
        use _owner = owner
        use _labels =
            match labels with
            | Some l -> l
            | None -> null
        let image = info.SampleShape.Length = 3
        if ext = ".png" && info.SampleShape <> [| 2L |] && not image then
            raise (
                ArgumentException(
                    sprintf
                        "--out: a .png needs 2-D samples (a scatter plot) or images C x H x W (a grid), but this model's samples have shape [%s]; write .csv or .npy."
                        (String.Join(", ", info.SampleShape)),
                    "--out"
                )
            )
        Ui.info ui (sprintf "model: %s" info.Description)
        let condition = Conditioning.condition c.Condition info c.Count
        use _condition =
            { new IDisposable with
                member _.Dispose() =
                    condition
                    |> Option.iter (fun k ->
                        k.Values.Dispose()
                        k.Mask.Dispose()
                        k.Basis |> Option.iter (fun b -> b.Dispose())) }
        // batches of the whole run (this shard's); one noise stream for the run, or one per sample
        let batches = Shards.batches c.Count (defaultArg c.BatchSize c.Count) c.Shard
        let perSample = c.PerSampleNoise || c.Shard.IsSome
        let priorStream, samplerStream = Noise.fromSeed c.Seed torch.CPU, Noise.fromSeed (c.Seed + 1L) torch.CPU
        let mutable nfe = 0
        let mutable seconds = 0.0
        let parts =
            [ for first, count in batches ->
                  use scope = torch.NewDisposeScope()
                  let slice (t: Tensor) =
                      if t.shape.[0] = int64 c.Count && count <> c.Count then
                          t.narrow (0L, int64 first, int64 count)
                      else
                          t
                  let batchCondition = condition |> Option.map (fun k -> { k with Values = slice k.Values; Mask = slice k.Mask })
                  // a guided model labels a whole batch (its labels are made in this scope)
                  let model =
                      match conditional with
                      | Some(cm, classes) when count <> c.Count -> fst (Conditioning.guided c.Condition cm classes count)
                      | _ -> model
                  let sampler = { c.Sampler with Sampling = { c.Sampler.Sampling with Condition = batchCondition } }
                  let priorNoise, noise =
                      if perSample then
                          let n = Noise.perSampleFrom c.Seed first
                          n, n
                      else
                          priorStream, samplerStream
                  let xT = Sampler.prior info.Sde (Array.append [| int64 count |] info.SampleShape) info.Dtype torch.CPU priorNoise
                  let result, s, _ = Conditioning.namingOptions (fun () -> runSamplerWith ui sampler info.Sde model xT noise 0L)
                  // evaluations per sample: the most any batch took (adaptive solvers differ by batch)
                  nfe <- max nfe result.Nfe
                  seconds <- seconds + s
                  result.Samples.MoveToOuterDisposeScope() ]
        if parts.IsEmpty then
            raise (
                ArgumentException(
                    sprintf
                        "--shard %d/%d gets no batch: %d samples in batches of %d make %d batches; give a smaller --batch-size or fewer shards."
                        c.Shard.Value.Index
                        c.Shard.Value.Count
                        c.Count
                        (defaultArg c.BatchSize c.Count)
                        ((c.Count + defaultArg c.BatchSize c.Count - 1) / defaultArg c.BatchSize c.Count),
                    "--shard"
                )
            )
        use raw = torch.cat (List.toArray parts, 0L)
        for p in parts do
            p.Dispose()
        use samples =
            match info.Standardisation with
            | Some st -> Standardisation.invert st raw
            | None -> raw.clone ()
        if not (torch.isfinite(samples).all().item<bool>()) then
            raise (
                InvalidOperationException(
                    sprintf
                        "the %s sampler's samples hold NaN or infinite values (the non-finite check was off: --check-finite false); rerun with the check on to learn whether the model or the steps are at fault."
                        c.Sampler.Name
                )
            )
        match ext with
        | ".png" when image -> ImageGrid.write c.Out (defaultArg info.Pixels PixelRange.Centred) 1 samples
        | ".png" ->
            let cloud = Plots.cloud samples
            Plots.save
                c.Out
                800
                800
                (Plots.scatterPlot (sprintf "%d samples: %s" c.Count c.Sampler.Label) (Some(Plots.limitsOf cloud)) cloud 1)
        | _ -> Outputs.writeFile c.Out (fun temporary -> DataFile.save temporary samples)
        let written = samples.shape.[0]
        ui.Out.WriteLine(
            sprintf
                "wrote %d samples%s to %s (%s, %d model evaluations, %s s)"
                written
                (match c.Shard with
                 | Some sh ->
                     sprintf
                         " (%s: samples %d..%d of %d)"
                         (Shards.describe sh)
                         (fst batches.Head)
                         (fst batches.Head + int written - 1)
                         c.Count
                 | None -> "")
                c.Out
                c.Sampler.Label
                nfe
                (inv seconds "F2")
        )
        0
