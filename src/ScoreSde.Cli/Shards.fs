namespace ScoreSde.Cli

open System
open System.Globalization
open System.IO
open System.Text
open ScoreSde

/// Shard K of N of a run (`--shard K/N`, K from 0): a cluster's array job runs N copies of a command,
/// each with its index (Kubernetes' JOB_COMPLETION_INDEX, Slurm's SLURM_ARRAY_TASK_ID) as K.
type Shard = { Index: int; Count: int }

/// Splitting a run over machines and putting the pieces back together. A run of n items (samples or
/// data points) is cut into batches of `--batch-size` items; shard K of N runs batches
/// floor(K C / N) .. floor((K + 1) C / N) - 1 of the C batches, and every item draws its noise from its
/// own stream (seeded by the seed and its index in the whole run). Each item is then computed in the
/// same batch, with the same noise, as in the single-machine run with the same --batch-size, so the
/// shards' outputs concatenated in order (`scoresde merge`) equal its output bit for bit (on the same
/// hardware, library and thread count).
[<RequireQualifiedAccess>]
module Shards =
    /// "K/N" with 0 <= K < N.
    let parse (text: string) : Shard =
        let fail () =
            raise (
                ArgumentException(
                    sprintf "--shard must be K/N with 0 <= K < N, e.g. 0/4 for the first of four shards (got '%s')." text,
                    "--shard"
                )
            )
        if isNull text then
            fail ()
        match text.Split('/') with
        | [| k; n |] ->
            match
                Int32.TryParse(k.Trim(), NumberStyles.None, CultureInfo.InvariantCulture),
                Int32.TryParse(n.Trim(), NumberStyles.None, CultureInfo.InvariantCulture)
            with
            | (true, k), (true, n) when n >= 1 && k < n -> { Index = k; Count = n }
            | _ -> fail ()
        | _ -> fail ()

    /// "shard K/N".
    let describe (s: Shard) = sprintf "shard %d/%d" s.Index s.Count

    /// The batches (first item, item count) of a run of `n` items in batches of `batchSize` that a
    /// shard runs (all of them without a shard). A shard may get none when there are fewer batches
    /// than shards.
    let batches (n: int) (batchSize: int) (shard: Shard option) : (int * int) list =
        if n < 1 then
            raise (ArgumentOutOfRangeException("n", sprintf "n must be at least 1 (got %d)." n))
        if batchSize < 1 then
            raise (ArgumentException(sprintf "--batch-size must be at least 1 (got %d)." batchSize, "--batch-size"))
        let count = (n + batchSize - 1) / batchSize
        let lo, hi =
            match shard with
            | None -> 0, count
            | Some s -> int (int64 s.Index * int64 count / int64 s.Count), int (int64 (s.Index + 1) * int64 count / int64 s.Count)
        [ for b in lo .. hi - 1 -> b * batchSize, min batchSize (n - b * batchSize) ]

    /// The header line of a CSV file (its first non-blank line when it holds no number), if any.
    let private csvParts (path: string) : string option * string list =
        let lines = File.ReadAllLines path |> Array.filter (fun l -> l.Trim().Length > 0) |> Array.toList
        match lines with
        | first :: rest when
            first.Split(',')
            |> Array.forall (fun f -> not (fst (Double.TryParse(f.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture))))
            ->
            Some first, rest
        | all -> None, all

    /// Concatenate .npy arrays along their first axis (the same dtype and trailing shape), or .csv
    /// files line by line (the same header line, kept once). Returns the number of rows written.
    let merge (out: string) (inputs: string list) : int64 =
        if List.isEmpty inputs then
            raise (ArgumentException("merge needs at least one input file.", "inputs"))
        let ext = Path.GetExtension(out).ToLowerInvariant()
        if ext <> ".npy" && ext <> ".csv" then
            raise (ArgumentException(sprintf "the output must end in .npy or .csv (got '%s')." out, "out"))
        for i in inputs do
            if Path.GetExtension(i).ToLowerInvariant() <> ext then
                raise (ArgumentException(sprintf "%s: the inputs must be %s files like the output." i ext, "inputs"))
            if Path.GetFullPath i = Path.GetFullPath out then
                raise (ArgumentException(sprintf "%s is both an input and the output." i, "out"))
        if ext = ".npy" then
            let arrays = inputs |> List.map (fun p -> p, Npy.read p)
            let first, a0 = List.head arrays
            for p, a in arrays do
                if a.Dtype <> a0.Dtype || a.Shape.Length <> a0.Shape.Length || a.Shape.[1..] <> a0.Shape.[1..] then
                    raise (
                        ArgumentException(
                            sprintf
                                "%s holds a %O array of shape (%s) but %s holds %O (%s); the shards of one run agree in all but the first axis."
                                p
                                a.Dtype
                                (String.Join(", ", a.Shape))
                                first
                                a0.Dtype
                                (String.Join(", ", a0.Shape)),
                            "inputs"
                        )
                    )
            let rows = arrays |> List.sumBy (fun (_, a) -> a.Shape.[0])
            let merged =
                { Shape = Array.append [| rows |] a0.Shape.[1..]
                  Values = arrays |> List.map (fun (_, a) -> a.Values) |> Array.concat
                  Dtype = a0.Dtype }
            Outputs.writeFile out (fun temp -> Npy.write temp merged)
            rows
        else
            let parts = inputs |> List.map (fun p -> p, csvParts p)
            let first, (header0, _) = List.head parts
            for p, (header, _) in parts do
                if header <> header0 then
                    raise (ArgumentException(sprintf "%s has another header line than %s." p first, "inputs"))
            let rows = parts |> List.sumBy (fun (_, (_, lines)) -> int64 lines.Length)
            Outputs.writeFile out (fun temp ->
                use w = new StreamWriter(temp, false, UTF8Encoding(false))
                header0 |> Option.iter w.WriteLine
                for _, (_, lines) in parts do
                    for l in lines do
                        w.WriteLine l)
            rows
