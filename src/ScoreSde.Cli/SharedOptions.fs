/// Options several commands share: the model to load (a directory or TorchScript with its time scale,
/// shape and SDE), the noise streams and `--shard`.
module ScoreSde.Cli.SharedOptions

open System
open System.CommandLine
open System.Globalization

let modelOption = Opt.required "--model" "A model directory written by 'train', or a TorchScript file"
let timeScale =
    Opt.positive
        "--time-scale"
        "TorchScript models: multiply t by this before calling the model (999 for models trained on t * 999 labels)"
        (Some 1.0)
let shape = Opt.text "--shape" "TorchScript models: shape of one sample, e.g. 2 or 3,32,32" (Some "2")
let sdeForModel =
    Samplers.sdeOption "TorchScript models: the SDE the model was trained with (default vp); a model directory stores its own" None

let parseShape (text: string) =
    let parts = text.Split(',', StringSplitOptions.TrimEntries)
    let dims =
        parts
        |> Array.map (fun p ->
            match Int64.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture) with
            | true, v when v > 0L -> v
            | _ -> raise (ArgumentException(sprintf "--shape must be positive integers separated by commas (got '%s')." text, "--shape")))
    if dims.Length = 0 then
        raise (ArgumentException("--shape must not be empty.", "--shape"))
    dims

let noiseOption =
    Opt.choice
        "--noise"
        "'stream': one noise stream for the run (PyTorch's for the seed); 'per-sample': each sample's own stream, seeded by the seed and its index (what --shard uses: the same bits in any shard)"
        [ "stream"; "per-sample" ]
        None
let shardOption =
    Opt.text
        "--shard"
        "K/N: run shard K (0 .. N-1) of N, its whole batches of --batch-size, per-sample noise; 'scoresde merge' joins the outputs"
        None
let shardValue (pr: ParseResult) = pr.GetValue shardOption |> Option.ofObj |> Option.map Shards.parse
let perSampleNoise (pr: ParseResult) =
    match pr.GetValue noiseOption, shardValue pr with
    | null, shard -> shard.IsSome
    | n, Some _ when n.ToLowerInvariant() = "stream" ->
        raise (ArgumentException("--shard draws per-sample noise; leave out --noise stream.", "--noise"))
    | n, _ -> n.ToLowerInvariant() = "per-sample"
