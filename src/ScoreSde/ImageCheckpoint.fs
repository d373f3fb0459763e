namespace ScoreSde

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp

/// Checkpoints of image training, written so that a killed run never leaves a half-written one: a
/// run directory holds `checkpoints/step-00001234/` (state.json: step, epoch, position, SDE,
/// architecture, settings, the caller's metadata; tensors.bin: the network, its EMA, Adam's moments,
/// the generator's state and the epoch's order; losses.bin: every step's loss as float64), each
/// written under a temporary name and renamed when complete, and `checkpoints/latest` naming the
/// newest (replaced by a rename). The EMA network is also saved as the run directory's model
/// (config.json and weights.bin, each replaced by a rename), so the directory samples like any model.
[<RequireQualifiedAccess>]
module ImageCheckpoint =
    /// Format tag of state.json.
    let formatName = "scoresde-checkpoint"

    /// The folder of checkpoints inside a run directory, and the file naming the newest.
    let folder, latestFile = "checkpoints", "latest"

    let private weightingName (w: LossWeighting) =
        match w with
        | LossWeighting.Noise -> "noise"
        | LossWeighting.Likelihood -> "likelihood"

    let private stateTensors (trainer: ImageTrainer) =
        [| yield! trainer.Net.state_dict().Values
           yield! trainer.Ema.state_dict().Values
           yield! trainer.Adam.Moments |]

    /// Write `file` through a temporary file renamed over it.
    let private replaceFile (file: string) (write: string -> unit) =
        let tmp = file + ".tmp"
        write tmp
        File.Move(tmp, file, true)

    /// Save the trainer's EMA network as the run directory's model (config.json and weights.bin,
    /// each replaced by a rename once written); `training` is stored under "training".
    let saveModel (runDir: string) (trainer: ImageTrainer) (training: JsonObject) =
        Check.notNull "trainer" trainer
        let tmp = Path.Combine(runDir, ".model.tmp")
        if Directory.Exists tmp then
            Directory.Delete(tmp, true)
        ModelFile.saveUNet tmp trainer.Ema trainer.Sde trainer.Settings.Pixels training
        for f in [ ModelFile.weightsFile; ModelFile.configFile ] do
            File.Move(Path.Combine(tmp, f), Path.Combine(runDir, f), true)
        Directory.Delete(tmp, true)

    /// Save a checkpoint of the trainer into `runDir` (created if needed), point `latest` at it and
    /// delete all but the newest `keep` checkpoints. `metadata` (the caller's, e.g. a command line) is
    /// stored in state.json. Returns the checkpoint's directory.
    let save (runDir: string) (trainer: ImageTrainer) (metadata: JsonObject) (keep: int) =
        Check.notNull "trainer" trainer
        Check.positiveInt "keep" keep
        if String.IsNullOrWhiteSpace runDir then
            Check.fail "runDir" runDir "a directory path"
        let root = Path.Combine(runDir, folder)
        Directory.CreateDirectory root |> ignore
        let name = sprintf "step-%08d" trainer.Step
        let final = Path.Combine(root, name)
        let tmp = Path.Combine(root, "." + name + ".tmp")
        if Directory.Exists tmp then
            Directory.Delete(tmp, true)
        Directory.CreateDirectory tmp |> ignore
        let s = trainer.Settings
        let t = s.Train
        let state = JsonObject()
        state.["format"] <- JsonValue.Create formatName
        state.["version"] <- JsonValue.Create 1
        state.["step"] <- JsonValue.Create trainer.Step
        state.["epoch"] <- JsonValue.Create trainer.Epoch
        state.["position"] <- JsonValue.Create trainer.Position
        state.["sde"] <- ModelFile.sdeJson trainer.Sde
        state.["network"] <- NetworkConfig.unetToJson trainer.Net.Config
        state.["dtype"] <- JsonValue.Create(if trainer.Net.Dtype = torch.float64 then "float64" else "float32")
        state.["pixels"] <- JsonValue.Create(Pixels.name s.Pixels)
        state.["labelDropout"] <- JsonValue.Create s.LabelDropout
        state.["steps"] <- JsonValue.Create t.Steps
        state.["batchSize"] <- JsonValue.Create t.BatchSize
        state.["learningRate"] <- JsonValue.Create t.LearningRate
        state.["warmupSteps"] <- JsonValue.Create t.WarmupSteps
        state.["cosineDecay"] <- JsonValue.Create t.CosineDecay
        state.["eps"] <- JsonValue.Create t.Eps
        state.["weighting"] <- JsonValue.Create(weightingName t.Weighting)
        state.["emaDecay"] <- JsonValue.Create t.EmaDecay
        t.GradClip |> Option.iter (fun c -> state.["gradClip"] <- JsonValue.Create c)
        state.["images"] <- JsonValue.Create trainer.Images.Count
        state.["metadata"] <- (if isNull metadata then JsonObject() :> JsonNode else metadata.DeepClone())
        File.WriteAllText(Path.Combine(tmp, "state.json"), state.ToJsonString(JsonSerializerOptions(WriteIndented = true)))
        do
            use w = new BinaryWriter(File.Create(Path.Combine(tmp, "tensors.bin")))
            for x in stateTensors trainer do
                x.Save w
            use g = trainer.Generator.get_state ()
            g.Save w
            trainer.Order.Save w
        do
            use w = new BinaryWriter(File.Create(Path.Combine(tmp, "losses.bin")))
            for l in trainer.Losses do
                w.Write l
        if Directory.Exists final then
            Directory.Delete(final, true)
        Directory.Move(tmp, final)
        replaceFile (Path.Combine(root, latestFile)) (fun f -> File.WriteAllText(f, name))
        let older =
            Directory.GetDirectories(root, "step-*")
            |> Array.map Path.GetFileName
            |> Array.filter (fun d -> d < name)
            |> Array.sort
        for d in older.[.. older.Length - keep] do
            Directory.Delete(Path.Combine(root, d), true)
        final

    /// The newest complete checkpoint of a run directory, if any.
    let latest (runDir: string) : string option =
        let file = Path.Combine(runDir, folder, latestFile)
        if File.Exists file then
            let d = Path.Combine(runDir, folder, File.ReadAllText(file).Trim())
            if Directory.Exists d then Some d else None
        else
            None

    /// The caller's metadata stored in a checkpoint.
    let metadata (checkpointDir: string) : JsonObject =
        let path = Path.Combine(checkpointDir, "state.json")
        let root = ConfigJson.readObject path formatName
        match ConfigJson.field path root "metadata" with
        | :? JsonObject as o -> o
        | _ -> JsonObject()

    /// Rebuild the trainer saved in `checkpointDir` (a directory written by `save`) over `images`
    /// (the run's images: the same set, which is checked by count), with `observer` as the settings'
    /// Observer. Training then continues exactly as the saved run would have.
    let load (checkpointDir: string) (images: ImageSet) (observer: (int -> float -> unit) option) : ImageTrainer =
        Native.ensureLoaded ()
        Check.notNull "images" images
        if not (Directory.Exists checkpointDir) then
            Check.fail "checkpointDir" checkpointDir "an existing checkpoint directory"
        let path = Path.Combine(checkpointDir, "state.json")
        let root = ConfigJson.readObject path formatName
        let get name = ConfigJson.get path root name
        if get "version" <> 1 then
            FileError.fail path "format version is not supported (this library reads version 1)"
        let count: int64 = ConfigJson.get path root "images"
        if count <> images.Count then
            Check.fail "images" images.Count (sprintf "the run's images (%d of them; %s holds a run on those)" count checkpointDir)
        let sde = ModelFile.sdeOfJson path (ConfigJson.field path root "sde")
        let config = NetworkConfig.unetOfJson path (ConfigJson.field path root "network")
        let dtype = if ConfigJson.get<string> path root "dtype" = "float64" then torch.float64 else torch.float32
        let pixels =
            match Pixels.tryParse (ConfigJson.get<string> path root "pixels") with
            | Some p -> p
            | None -> FileError.fail path "'pixels' must be zero-one or centred"
        let settings =
            { Train =
                { Steps = get "steps"
                  BatchSize = get "batchSize"
                  LearningRate = ConfigJson.get path root "learningRate"
                  WarmupSteps = get "warmupSteps"
                  CosineDecay = ConfigJson.get path root "cosineDecay"
                  Eps = ConfigJson.get path root "eps"
                  Weighting =
                    (if ConfigJson.get<string> path root "weighting" = "likelihood" then
                         LossWeighting.Likelihood
                     else
                         LossWeighting.Noise)
                  EmaDecay = ConfigJson.get path root "emaDecay"
                  GradClip =
                    (match root.AsObject().TryGetPropertyValue("gradClip"): bool * JsonNode with
                     | true, v when not (isNull v) -> Some(v.GetValue<float>())
                     | _ -> None)
                  Observer = observer }
              Pixels = pixels
              LabelDropout = ConfigJson.get path root "labelDropout" }
        let step: int = get "step"
        let losses =
            let bytes = File.ReadAllBytes(Path.Combine(checkpointDir, "losses.bin"))
            if bytes.Length <> 8 * step then
                FileError.fail (Path.Combine(checkpointDir, "losses.bin")) (sprintf "holds %d bytes; expected %d losses" bytes.Length step)
            List.init step (fun i -> BitConverter.ToDouble(bytes, 8 * i))
        let net = UNet.Empty(config, dtype)
        let ema = UNet.Empty(config, dtype)
        let generator = new torch.Generator(0UL, torch.CPU)
        let mutable trainer = None
        try
            ImageTraining.validate settings net images
            let tensorsPath = Path.Combine(checkpointDir, "tensors.bin")
            use r = new BinaryReader(File.OpenRead tensorsPath)
            let read () = TensorExtensionMethods.Load(r)
            let copyInto (targets: Tensor seq) =
                use _noGrad = torch.no_grad ()
                for target in targets do
                    use source = read ()
                    if source.shape <> target.shape then
                        FileError.fail tensorsPath "does not hold this network's training state"
                    target.copy_ (source) |> ignore
            copyInto (net.state_dict().Values)
            copyInto (ema.state_dict().Values)
            let moments = Array.init (2 * Seq.length (net.parameters ())) (fun _ -> read ())
            try
                do
                    use g = read ()
                    generator.set_state g
                let order = read ()
                if config.Dropout > 0.0 then
                    net.DropoutGenerator <- generator
                let t = new ImageTrainer(sde, settings, net, ema, images, generator, order, get "position", get "epoch", losses)
                trainer <- Some t
                t.Adam.Restore(step, moments)
                t
            finally
                for m in moments do
                    m.Dispose()
        with _ ->
            match trainer with
            | Some t -> (t :> IDisposable).Dispose()
            | None ->
                net.Dispose()
                ema.Dispose()
                generator.Dispose()
            reraise ()
