namespace ScoreSde

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp

/// A classifier loaded from a directory, with the pixel range its inputs use.
type LoadedClassifier =
    {
        Classifier: Classifier
        Pixels: PixelRange
        /// The free-form "training" object of config.json (accuracy, settings, time).
        Training: JsonObject
    }

    interface IDisposable with
        member c.Dispose() = c.Classifier.Dispose()

/// Classifier directories: config.json (format "scoresde-classifier", the architecture, dtype, pixel
/// range, training metadata) and weights.bin (TorchSharp's state-dict format).
[<RequireQualifiedAccess>]
module ClassifierFile =
    /// The format tag written into config.json.
    let formatName = "scoresde-classifier"

    /// Save a classifier into `dir` (created if needed; existing files replaced).
    let save (dir: string) (net: Classifier) (pixels: PixelRange) (training: JsonObject) =
        Check.notNull "net" net
        if String.IsNullOrWhiteSpace dir then
            Check.fail "dir" dir "a directory path"
        if File.Exists dir then
            Check.fail "dir" dir "a directory path, not an existing file"
        Directory.CreateDirectory dir |> ignore
        let c = net.Config
        let root = JsonObject()
        root.["format"] <- JsonValue.Create formatName
        root.["version"] <- JsonValue.Create 1
        root.["network"] <-
            JsonObject(
                dict
                    [ "channels", JsonValue.Create c.Channels :> JsonNode
                      "height", JsonValue.Create c.Height
                      "width", JsonValue.Create c.Width
                      "widths", ConfigJson.ofInts c.Widths
                      "features", JsonValue.Create c.Features
                      "classes", JsonValue.Create c.Classes
                      "groups", JsonValue.Create c.Groups
                      "timeConditional", JsonValue.Create c.TimeConditional
                      "fourierFeatures", JsonValue.Create c.FourierFeatures
                      "fourierScale", JsonValue.Create c.FourierScale ]
            )
        root.["dtype"] <- JsonValue.Create(if net.Dtype = torch.float64 then "float64" else "float32")
        root.["pixels"] <- JsonValue.Create(Pixels.name pixels)
        if not (isNull training) then
            root.["training"] <- training.DeepClone()
        File.WriteAllText(Path.Combine(dir, "config.json"), root.ToJsonString(JsonSerializerOptions(WriteIndented = true)))
        net.save (Path.Combine(dir, "weights.bin")) |> ignore

    /// Load a classifier directory written by `save` (in eval mode).
    let load (dir: string) : LoadedClassifier =
        Native.ensureLoaded ()
        if String.IsNullOrWhiteSpace dir || not (Directory.Exists dir) then
            Check.fail "dir" dir "an existing classifier directory"
        let path = Path.Combine(dir, "config.json")
        let root = ConfigJson.readObject path formatName
        let n = ConfigJson.field path root "network"
        let int name = ConfigJson.get<int> path n name
        let config =
            { Channels = int "channels"
              Height = int "height"
              Width = int "width"
              Widths = ConfigJson.intArray path n "widths" |> List.ofArray
              Features = int "features"
              Classes = int "classes"
              Groups = int "groups"
              TimeConditional = ConfigJson.get<bool> path n "timeConditional"
              FourierFeatures = int "fourierFeatures"
              FourierScale = ConfigJson.get<float> path n "fourierScale" }
        let dtype =
            match ConfigJson.get<string> path root "dtype" with
            | "float32" -> torch.float32
            | "float64" -> torch.float64
            | d -> FileError.fail path (sprintf "'dtype' must be float32 or float64 (got %s)" d)
        let pixels =
            let text = ConfigJson.get<string> path root "pixels"
            match Pixels.tryParse text with
            | Some p -> p
            | None -> FileError.fail path (sprintf "'pixels' must be zero-one or centred (got %s)" text)
        let weights = Path.Combine(dir, "weights.bin")
        FileError.requireFile weights
        let net =
            try
                Classifier.Empty(config, dtype)
            with :? ArgumentException as e ->
                FileError.fail path e.Message
        try
            net.load (weights) |> ignore
        with e ->
            net.Dispose()
            FileError.fail weights (sprintf "does not hold this classifier's weights (%s)" (e.Message.Split('\n').[0]))
        net.eval ()
        let training =
            match root.AsObject().TryGetPropertyValue("training"): bool * JsonNode with
            | true, (:? JsonObject as t) -> t
            | _ -> JsonObject()
        { Classifier = net; Pixels = pixels; Training = training }
