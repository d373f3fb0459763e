/// The probability-flow likelihood behind `likelihood` and the demo's held-out bits/dim: batches,
/// Hutchinson noise per run or per point, the progress bar and the report.
module ScoreSde.Cli.Likelihoods

open System
open System.Diagnostics
open System.IO
open TorchSharp
open ScoreSde

let private inv = Commands.inv
let private host = Commands.host

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
        Outputs.writeFile o (fun temp ->
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
    Commands.checkSde c.Sde loaded c.ModelPath
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
