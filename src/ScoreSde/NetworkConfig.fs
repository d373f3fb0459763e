namespace ScoreSde

open System
open System.Text.Json.Nodes
open TorchSharp

/// Reading config.json values with errors that name the file and the key.
module internal ConfigJson =
    let field (path: string) (node: JsonNode) (name: string) : JsonNode =
        match node with
        | :? JsonObject as o when o.ContainsKey name && not (isNull o.[name]) -> o.[name]
        | _ -> FileError.fail path (sprintf "missing '%s'" name)

    let get<'T> (path: string) (node: JsonNode) (name: string) : 'T =
        let v = field path node name
        try
            v.GetValue<'T>()
        with _ ->
            FileError.fail path (sprintf "'%s' must be a %s (got %s)" name (typeof<'T>.Name) (v.ToJsonString()))

    let private array<'T> (what: string) (path: string) (node: JsonNode) (name: string) : 'T[] =
        match field path node name with
        | :? JsonArray as a ->
            a
            |> Seq.map (fun v ->
                try
                    v.GetValue<'T>()
                with _ ->
                    FileError.fail path (sprintf "'%s' must hold %s" name what))
            |> Seq.toArray
        | v -> FileError.fail path (sprintf "'%s' must be an array of %s (got %s)" name what (v.ToJsonString()))

    let floatArray (path: string) (node: JsonNode) (name: string) : float[] = array<float> "numbers" path node name

    let intArray (path: string) (node: JsonNode) (name: string) : int[] = array<int> "integers" path node name

    /// The JSON object of a config.json file whose "format" is `format`.
    let readObject (path: string) (format: string) : JsonObject =
        FileError.requireFile path
        let root =
            try
                JsonNode.Parse(System.IO.File.ReadAllText path)
            with :? System.Text.Json.JsonException as e ->
                FileError.fail path (sprintf "not valid JSON (%s)" e.Message)
        match root with
        | :? JsonObject as o ->
            let found = get<string> path o "format"
            if found <> format then
                FileError.fail path (sprintf "'format' is '%s', expected '%s'" found format)
            o
        | _ -> FileError.fail path "must hold a JSON object"

    let ofInts (values: int seq) = JsonArray(values |> Seq.map (fun v -> JsonValue.Create v :> JsonNode) |> Seq.toArray)

/// The architecture of a saved network: which network and its configuration.
[<RequireQualifiedAccess>]
type NetworkConfig =
    /// The MLP score network for points (`ScoreNet`).
    | Mlp of ScoreNetConfig
    /// The score U-Net for images (`UNet`).
    | UNet of UNetConfig

[<RequireQualifiedAccess>]
module NetworkConfig =
    /// Shape of one sample (without the batch dimension).
    let sampleShape (config: NetworkConfig) : int64[] =
        match config with
        | NetworkConfig.Mlp c -> [| int64 c.Dim |]
        | NetworkConfig.UNet c -> [| int64 c.Channels; int64 c.Height; int64 c.Width |]

    /// A one-line human-readable description.
    let describe (config: NetworkConfig) =
        match config with
        | NetworkConfig.Mlp c -> sprintf "MLP %d -> %d x %d -> %d (time embedding %d)" c.Dim c.Layers c.Hidden c.Dim c.Embedding
        | NetworkConfig.UNet c ->
            sprintf
                "U-Net %dx%dx%d, %d base channels x [%s], %d blocks per level, attention at [%s]%s"
                c.Channels
                c.Height
                c.Width
                c.BaseChannels
                (String.Join(", ", c.ChannelMultipliers))
                c.BlocksPerLevel
                (String.Join(", ", c.AttentionResolutions))
                (if c.Classes > 0 then sprintf ", %d classes" c.Classes else "")

    /// The "network" object of config.json for a U-Net (type "unet").
    let unetToJson (c: UNetConfig) : JsonObject =
        JsonObject(
            dict
                [ "type", JsonValue.Create "unet" :> JsonNode
                  "channels", JsonValue.Create c.Channels
                  "height", JsonValue.Create c.Height
                  "width", JsonValue.Create c.Width
                  "baseChannels", JsonValue.Create c.BaseChannels
                  "channelMultipliers", ConfigJson.ofInts c.ChannelMultipliers
                  "blocksPerLevel", JsonValue.Create c.BlocksPerLevel
                  "attentionResolutions", ConfigJson.ofInts c.AttentionResolutions
                  "dropout", JsonValue.Create c.Dropout
                  "groups", JsonValue.Create c.Groups
                  "fourierFeatures", JsonValue.Create c.FourierFeatures
                  "fourierScale", JsonValue.Create c.FourierScale
                  "timeChannels", JsonValue.Create c.TimeChannels
                  "classes", JsonValue.Create c.Classes ]
        )

    /// A U-Net configuration from a "network" object of type "unet" (`path` names the file in errors).
    let unetOfJson (path: string) (node: JsonNode) : UNetConfig =
        let int name = ConfigJson.get<int> path node name
        { Channels = int "channels"
          Height = int "height"
          Width = int "width"
          BaseChannels = int "baseChannels"
          ChannelMultipliers = ConfigJson.intArray path node "channelMultipliers" |> List.ofArray
          BlocksPerLevel = int "blocksPerLevel"
          AttentionResolutions = ConfigJson.intArray path node "attentionResolutions" |> List.ofArray
          Dropout = ConfigJson.get<float> path node "dropout"
          Groups = int "groups"
          FourierFeatures = int "fourierFeatures"
          FourierScale = ConfigJson.get<float> path node "fourierScale"
          TimeChannels = int "timeChannels"
          Classes = int "classes" }

    /// A network of this architecture with zero parameters (to be loaded), and its forward (x, t).
    let createEmpty (config: NetworkConfig) (dtype: torch.ScalarType) : torch.nn.Module * (Tensor -> Tensor -> Tensor) =
        match config with
        | NetworkConfig.Mlp c ->
            let net = ScoreNet.Empty(c, dtype)
            net, (fun x t -> net.forward (x, t))
        | NetworkConfig.UNet c ->
            let net = UNet.Empty(c, dtype)
            net, (fun x t -> net.Forward(x, t, null))

    /// Scalar parameters of a network (trainable ones; buffers not counted).
    let parameterCount (net: torch.nn.Module) = net.parameters () |> Seq.sumBy (fun p -> p.numel ())
