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
    let internal runSampler (ui: Ui) (s: SamplerRun) (sde: Sde) (model: Model) (xT: Tensor) (seed: int64) (paths: int64) =
        let noise = Noise.fromSeed seed xT.device
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
        let n = points.shape.[0]
        let dim = float points.shape.[1]
        let batches = int ((n + int64 batchSize - 1L) / int64 batchSize)
        let logp = ResizeArray<float>()
        let mutable nfe = 0
        let watch = Stopwatch.StartNew()
        Ui.progress ui (sprintf "likelihood of %d points" n) batches (fun advance ->
            for b in 0 .. batches - 1 do
                use scope = torch.NewDisposeScope()
                let start = int64 b * int64 batchSize
                let chunk = points.narrow (0L, start, min (int64 batchSize) (n - start))
                let x =
                    match st with
                    | Some s -> Standardisation.apply s chunk
                    | None -> chunk
                use r = Likelihood.compute sde model settings noise x
                let correction =
                    match st with
                    | Some s -> Standardisation.logDetJacobian s
                    | None -> 0.0
                logp.AddRange(host r.LogLikelihood |> Array.map (fun v -> v + correction))
                nfe <- nfe + r.Nfe
                advance ())
        let logp = logp.ToArray()
        logp, logp |> Array.map (fun v -> -v / (dim * Math.Log 2.0)), nfe, watch.Elapsed.TotalSeconds

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
        let logp, bpd, nfe, seconds =
            logLikelihoods ui info.Sde loaded.Model info.Standardisation settings (Noise.fromSeed c.Seed torch.CPU) c.BatchSize points
        c.Out
        |> Option.iter (fun o ->
            let values = Array.init logp.Length (fun i -> [| logp.[i]; bpd.[i] |]) |> Array.concat
            let table = { Shape = [| int64 logp.Length; 2L |]; Values = values; Dtype = torch.float64 }
            Outputs.writeFile o (fun temporary ->
                if o.EndsWith(".npy", StringComparison.OrdinalIgnoreCase) then
                    Npy.write temporary table
                else
                    Csv.write temporary (Some [| "log_likelihood"; "bits_per_dim" |]) table))
        let m, se = meanAndError bpd
        let ml, _ = meanAndError logp
        ui.Out.WriteLine(
            sprintf
                "%s bits/dim (+- %s standard error) over %d points of %s; mean log-likelihood %s nats; %d model evaluations, %s s"
                (inv m "F4")
                (inv se "F4")
                logp.Length
                c.Data
                (inv ml "F4")
                nfe
                (inv seconds "F1")
        )
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
        let model, info, owner, labels =
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
                    model, info, owner, Some labels
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
                loaded.Model, loaded.Info, (loaded :> IDisposable), None
        use _owner = owner
        use _labels =
            match labels with
            | Some l -> l
            | None -> null
        if ext = ".png" && info.SampleShape <> [| 2L |] then
            raise (
                ArgumentException(
                    sprintf
                        "--out: a .png scatter plot needs 2-D samples, but this model's samples have shape [%s]; write .csv or .npy."
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
        let sampler = { c.Sampler with Sampling = { c.Sampler.Sampling with Condition = condition } }
        let noise = Noise.fromSeed c.Seed torch.CPU
        use xT = Sampler.prior info.Sde (Array.append [| int64 c.Count |] info.SampleShape) info.Dtype torch.CPU noise
        let result, seconds, _ = Conditioning.namingOptions (fun () -> runSampler ui sampler info.Sde model xT (c.Seed + 1L) 0L)
        use raw = result.Samples
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
        | ".png" ->
            let cloud = Plots.cloud samples
            Plots.save
                c.Out
                800
                800
                (Plots.scatterPlot (sprintf "%d samples: %s" c.Count c.Sampler.Label) (Some(Plots.limitsOf cloud)) cloud 1)
        | _ -> Outputs.writeFile c.Out (fun temporary -> DataFile.save temporary samples)
        ui.Out.WriteLine(
            sprintf "wrote %d samples to %s (%s, %d model evaluations, %s s)" c.Count c.Out c.Sampler.Label result.Nfe (inv seconds "F2")
        )
        0
