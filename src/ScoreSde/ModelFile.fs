namespace ScoreSde

open System
open System.IO
open System.Runtime.InteropServices
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp

/// What a saved or imported model is: how to call it and what its samples look like.
type ModelInfo =
    {
        Sde: Sde
        /// The network is called with t * TimeScale (1 for networks trained on t in [0, 1]; 999 for
        /// networks trained on the paper code's discrete labels t * 999).
        TimeScale: float
        /// What the network's output means.
        Output: ModelOutput
        /// Shape of one sample, without the batch dimension (e.g. [| 2 |]).
        SampleShape: int64[]
        /// dtype the network expects.
        Dtype: torch.ScalarType
        /// Map between data space and the model's space (None: the identity).
        Standardisation: Standardisation option
        /// For image models: how 8-bit pixel levels map to the model's space.
        Pixels: PixelRange option
        /// Human-readable description of the network.
        Description: string
    }

/// A model ready to sample with: the `Model` (time scale applied), its description, and the
/// network that owns the native memory (disposed with this value).
type LoadedModel =
    { Model: Model
      Info: ModelInfo
      Network: torch.nn.Module }

    interface IDisposable with
        member m.Dispose() = m.Network.Dispose()

/// Options for importing a TorchScript file (written by PyTorch's `torch.jit.save`).
type TorchScriptOptions =
    {
        Sde: Sde
        TimeScale: float
        Output: ModelOutput
        /// Shape of one sample without the batch dimension.
        SampleShape: int64[]
    }

/// Saving and loading models. The library's own format is a directory holding `config.json`
/// (architecture, SDE, time scale, standardisation, training metadata) and `weights.bin`
/// (TorchSharp's state-dict format). TorchScript files exported from PyTorch load too: they must
/// map (x [B, ...], t [B]) to a tensor shaped like x.
[<RequireQualifiedAccess>]
module ModelFile =
    /// File names inside a model directory.
    let configFile, weightsFile = "config.json", "weights.bin"

    /// The format tag written into config.json.
    let formatName = "scoresde-model"

    let private outputName (o: ModelOutput) =
        match o with
        | ModelOutput.Noise -> "noise"
        | ModelOutput.Score -> "score"
        | ModelOutput.Data -> "data"

    /// The output kind named "noise", "score" or "data".
    let tryParseOutput (text: string) =
        match (if isNull text then "" else text.Trim().ToLowerInvariant()) with
        | "noise"
        | "eps" -> Some ModelOutput.Noise
        | "score" -> Some ModelOutput.Score
        | "data"
        | "x0" -> Some ModelOutput.Data
        | _ -> None

    let private dtypeName (d: torch.ScalarType) = if d = torch.float64 then "float64" else "float32"

    /// The model with the time scale applied to t before the network sees it.
    let private scaled (forward: Tensor -> Tensor -> Tensor) (timeScale: float) (output: ModelOutput) : Model =
        if timeScale = 1.0 then
            { Forward = forward; Output = output }
        else
            { Forward =
                (fun x t ->
                    // bound, so that it outlives the native call (TorchSharp Scalars have finalizers)
                    use scale = Tensors.scalar timeScale
                    use ts = t.mul (scale)
                    forward x ts)
              Output = output }

    /// The SDE as config.json stores it: its type ("vp", "subvp" or "ve") and its parameters.
    let sdeJson (sde: Sde) : JsonObject =
        let o = JsonObject()
        o.["type"] <- JsonValue.Create(Sde.name sde)
        match sde with
        | Sde.Vp s
        | Sde.SubVp s ->
            o.["betaMin"] <- JsonValue.Create s.BetaMin
            o.["betaMax"] <- JsonValue.Create s.BetaMax
        | Sde.Ve s ->
            o.["sigmaMin"] <- JsonValue.Create s.SigmaMin
            o.["sigmaMax"] <- JsonValue.Create s.SigmaMax
        o

    /// Write config.json (around the "network" object) and the weights into `dir`.
    let private write
        (dir: string)
        (network: JsonObject)
        (net: torch.nn.Module)
        (dtype: torch.ScalarType)
        (sde: Sde)
        (standardisation: Standardisation option)
        (pixels: PixelRange option)
        (training: JsonObject)
        =
        if String.IsNullOrWhiteSpace dir then
            Check.fail "dir" dir "a directory path"
        if File.Exists dir then
            Check.fail "dir" dir "a directory path, not an existing file"
        Directory.CreateDirectory dir |> ignore
        let floats (v: float[]) = JsonArray(v |> Array.map (fun x -> JsonValue.Create x :> JsonNode))
        let config =
            JsonObject(
                [ Collections.Generic.KeyValuePair("format", JsonValue.Create formatName :> JsonNode)
                  Collections.Generic.KeyValuePair("version", JsonValue.Create 1 :> JsonNode) ]
            )
        config.["network"] <- network
        config.["dtype"] <- JsonValue.Create(dtypeName dtype)
        config.["output"] <- JsonValue.Create "noise"
        config.["timeScale"] <- JsonValue.Create 1.0
        config.["sde"] <- sdeJson sde
        match standardisation with
        | Some st -> config.["standardisation"] <- JsonObject(dict [ "shift", floats st.Shift :> JsonNode; "scale", floats st.Scale ])
        | None -> ()
        pixels |> Option.iter (fun p -> config.["pixels"] <- JsonValue.Create(Pixels.name p))
        if not (isNull training) then
            config.["training"] <- training.DeepClone()
        let options = JsonSerializerOptions(WriteIndented = true)
        File.WriteAllText(Path.Combine(dir, configFile), config.ToJsonString options)
        net.save (Path.Combine(dir, weightsFile)) |> ignore

    /// Save a trained network and its metadata into directory `dir` (created if needed; existing
    /// config.json and weights.bin are replaced). `training` is free-form metadata stored under
    /// "training" in config.json.
    let save (dir: string) (net: ScoreNet) (sde: Sde) (standardisation: Standardisation option) (training: JsonObject) =
        Check.notNull "net" net
        let c = net.Config
        let network =
            JsonObject(
                dict
                    [ "type", JsonValue.Create "mlp" :> JsonNode
                      "dim", JsonValue.Create c.Dim
                      "hidden", JsonValue.Create c.Hidden
                      "layers", JsonValue.Create c.Layers
                      "embedding", JsonValue.Create c.Embedding
                      "maxFrequency", JsonValue.Create c.MaxFrequency ]
            )
        write dir network net net.Dtype sde standardisation None training

    /// Save a trained U-Net, the pixel range its data were scaled to, and free-form training
    /// metadata into directory `dir` (as `save`; network type "unet").
    let saveUNet (dir: string) (net: UNet) (sde: Sde) (pixels: PixelRange) (training: JsonObject) =
        Check.notNull "net" net
        write dir (NetworkConfig.unetToJson net.Config) net net.Dtype sde None (Some pixels) training

    // ---- reading config.json with clear errors ----

    let private field = ConfigJson.field
    let private get<'T> path node name : 'T = ConfigJson.get<'T> path node name
    let private floatArray = ConfigJson.floatArray

    /// The SDE stored by `sdeJson` in the file at `path` (errors name the file).
    let sdeOfJson (path: string) (sdeNode: JsonNode) : Sde =
        let number = get<float> path sdeNode
        let create, a, b =
            match get<string> path sdeNode "type" with
            | "vp" -> Sde.vp, "betaMin", "betaMax"
            | "subvp" -> Sde.subVp, "betaMin", "betaMax"
            | "ve" -> Sde.ve, "sigmaMin", "sigmaMax"
            | kind -> FileError.fail path (sprintf "SDE type '%s' is not supported (expected vp, subvp or ve)" kind)
        let a, b = number a, number b
        try
            create a b
        with :? ArgumentException as e ->
            FileError.fail path e.Message

    /// Read a model directory's config.json: the architecture and the model information.
    let readConfig (dir: string) : NetworkConfig * ModelInfo * JsonObject =
        let path = Path.Combine(dir, configFile)
        let root = ConfigJson.readObject path formatName
        let version = get<int> path root "version"
        if version <> 1 then
            FileError.fail path (sprintf "format version %d is not supported (this library reads version 1)" version)
        let network = field path root "network"
        let config =
            match get<string> path network "type" with
            | "mlp" ->
                NetworkConfig.Mlp
                    { Dim = get<int> path network "dim"
                      Hidden = get<int> path network "hidden"
                      Layers = get<int> path network "layers"
                      Embedding = get<int> path network "embedding"
                      MaxFrequency = get<float> path network "maxFrequency" }
            | "unet" -> NetworkConfig.UNet(NetworkConfig.unetOfJson path network)
            | kind -> FileError.fail path (sprintf "network type '%s' is not supported (expected 'mlp' or 'unet')" kind)
        let sampleShape = NetworkConfig.sampleShape config
        let dim = int (Array.fold (*) 1L sampleShape)
        let sde = sdeOfJson path (field path root "sde")
        let dtype =
            match get<string> path root "dtype" with
            | "float32" -> torch.float32
            | "float64" -> torch.float64
            | d -> FileError.fail path (sprintf "'dtype' must be float32 or float64 (got %s)" d)
        let output =
            let o = get<string> path root "output"
            match tryParseOutput o with
            | Some v -> v
            | None -> FileError.fail path (sprintf "'output' must be noise, score or data (got %s)" o)
        let standardisation =
            match root.AsObject().TryGetPropertyValue("standardisation"): bool * JsonNode with
            | true, node when not (isNull node) ->
                let st = { Shift = floatArray path node "shift"; Scale = floatArray path node "scale" }
                if st.Shift.Length <> dim || st.Scale.Length <> dim then
                    FileError.fail path (sprintf "'standardisation' must hold %d shifts and scales" dim)
                if st.Scale |> Array.exists (fun s -> not (s > 0.0) || Double.IsInfinity s) then
                    FileError.fail path "'standardisation.scale' must hold positive numbers"
                Some st
            | _ -> None
        let pixels =
            match root.AsObject().TryGetPropertyValue("pixels"): bool * JsonNode with
            | true, node when not (isNull node) ->
                let text = get<string> path root "pixels"
                match Pixels.tryParse text with
                | Some p -> Some p
                | None -> FileError.fail path (sprintf "'pixels' must be zero-one or centred (got %s)" text)
            | _ -> None
        let timeScale = get<float> path root "timeScale"
        if not (timeScale > 0.0) || Double.IsInfinity timeScale then
            FileError.fail path (sprintf "'timeScale' must be positive (got %g)" timeScale)
        let training =
            match root.AsObject().TryGetPropertyValue("training"): bool * JsonNode with
            | true, (:? JsonObject as t) -> t
            | _ -> JsonObject()
        let info =
            { Sde = sde
              TimeScale = timeScale
              Output = output
              SampleShape = sampleShape
              Dtype = dtype
              Standardisation = standardisation
              Pixels = pixels
              Description = NetworkConfig.describe config }
        config, info, training

    /// Load a model directory written by `save`.
    let loadNative (dir: string) : LoadedModel =
        Native.ensureLoaded ()
        if not (Directory.Exists dir) then
            Check.fail "path" dir "an existing model directory"
        let config, info, _ = readConfig dir
        let weights = Path.Combine(dir, weightsFile)
        FileError.requireFile weights
        let net, forward =
            try
                NetworkConfig.createEmpty config info.Dtype
            with :? ArgumentException as e ->
                FileError.fail (Path.Combine(dir, configFile)) e.Message
        try
            net.load (weights) |> ignore
        with e ->
            net.Dispose()
            FileError.fail weights (sprintf "does not hold this network's weights (%s)" (e.Message.Split('\n').[0]))
        net.eval ()
        { Model = scaled forward info.TimeScale info.Output
          Info =
            { info with
                Description = sprintf "%s, %d parameters" info.Description (NetworkConfig.parameterCount net) }
          Network = net }

    /// Call the model once on a small batch of the given sample shape: a model that fails or
    /// returns the wrong shape is rejected with an ArgumentException naming `model` and the reason.
    let probe (loaded: LoadedModel) =
        Check.notNull "loaded" loaded
        use scope = torch.NewDisposeScope()
        use _noGrad = torch.no_grad ()
        let shape = Array.append [| 2L |] loaded.Info.SampleShape
        let x = torch.zeros (shape, dtype = loaded.Info.Dtype)
        use half = Tensors.scalar 0.5
        let t = torch.full ([| 2L |], half, dtype = loaded.Info.Dtype)
        let describe (s: int64[]) = "[" + String.Join(", ", s) + "]"
        let out =
            try
                loaded.Model.Forward x t
            with e ->
                let lines = e.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                let first = if lines.Length > 0 then lines.[0].Trim() else e.GetType().Name
                raise (
                    ArgumentException(
                        sprintf
                            "the model cannot be called as forward(x, t) with x %s %s and t [2]: %s"
                            (describe shape)
                            (dtypeName loaded.Info.Dtype)
                            first,
                        "model"
                    )
                )
        if isNull out || out.shape <> shape then
            raise (
                ArgumentException(
                    sprintf
                        "the model must return a tensor shaped like x %s; it returned %s"
                        (describe shape)
                        (if isNull out then "null" else describe out.shape),
                    "model"
                )
            )

    /// Import a TorchScript file whose forward maps (x, t) to a tensor shaped like x, and check it
    /// with `probe`.
    let loadTorchScript (path: string) (options: TorchScriptOptions) : LoadedModel =
        Native.ensureLoaded ()
        FileError.requireFile path
        Check.positive "TimeScale" options.TimeScale
        Check.shape "SampleShape" options.SampleShape
        let m =
            try
                torch.jit.load<Tensor, Tensor, Tensor>(path)
            with
            | :? ExternalException
            | :? InvalidOperationException as e ->
                FileError.fail path (sprintf "not a TorchScript file that TorchSharp can load (%s)" ((e.Message.Split('\n').[0]).Trim()))
        m.eval ()
        let loaded =
            { Model = scaled (fun x t -> m.forward (x, t)) options.TimeScale options.Output
              Info =
                { Sde = options.Sde
                  TimeScale = options.TimeScale
                  Output = options.Output
                  SampleShape = options.SampleShape
                  Dtype = torch.float32
                  Standardisation = None
                  Pixels = None
                  Description = sprintf "TorchScript %s" (Path.GetFileName path) }
              Network = m }
        try
            probe loaded
        with _ ->
            m.Dispose()
            reraise ()
        loaded

    /// Load a model: a directory in the library's format, or a TorchScript file (imported with
    /// `torchScript`'s options).
    let load (path: string) (torchScript: TorchScriptOptions) : LoadedModel =
        if String.IsNullOrWhiteSpace path then
            Check.fail "path" path "a model directory or TorchScript file"
        if Directory.Exists path then loadNative path
        elif File.Exists path then loadTorchScript path torchScript
        else FileError.fail path "no such model directory or TorchScript file"
