/// `scoresde train --dataset fashion-mnist --net unet`: denoising score matching of a score U-Net on
/// MNIST-format images, with checkpoints a killed run resumes from bit for bit (`--resume DIR`).
module ScoreSde.Cli.ImageTrainCommand

open System
open System.CommandLine
open System.Diagnostics
open System.IO
open System.Text.Json.Nodes
open Spectre.Console
open TorchSharp
open ScoreSde

/// What an image training run was asked to do (stored in every checkpoint, so `--resume` needs only
/// the directory).
type ImageTrainRun =
    {
        DataDir: string
        Sde: Sde
        Settings: ImageTrainSettings
        Seed: int64
        /// Architecture options over `UNet.defaultConfig`.
        Width: int
        Multipliers: int list
        Blocks: int
        Attention: bool
        Dropout: float
        ClassConditional: bool
        Out: string
        CheckpointEvery: int
        Keep: int
        LogEvery: int
        LossPlot: string option
    }

let private inv (v: float) (format: string) = v.ToString(format, Globalization.CultureInfo.InvariantCulture)

let private duration (seconds: float) =
    let s = int (max 0.0 seconds)
    if s >= 3600 then
        sprintf "%dh%02dm" (s / 3600) (s % 3600 / 60)
    else
        sprintf "%dm%02ds" (s / 60) (s % 60)

/// The run's options as checkpoint metadata, and back.
let private toJson (c: ImageTrainRun) (seconds: float) =
    let o = JsonObject()
    o.["dataDir"] <- JsonValue.Create(Path.GetFullPath c.DataDir)
    o.["seed"] <- JsonValue.Create c.Seed
    o.["out"] <- JsonValue.Create(Path.GetFullPath c.Out)
    o.["checkpointEvery"] <- JsonValue.Create c.CheckpointEvery
    o.["keep"] <- JsonValue.Create c.Keep
    o.["logEvery"] <- JsonValue.Create c.LogEvery
    c.LossPlot |> Option.iter (fun p -> o.["plot"] <- JsonValue.Create(Path.GetFullPath p))
    o.["seconds"] <- JsonValue.Create seconds
    o

/// The loss curve as CSV (step, loss), replaced by a rename.
let private writeLosses (dir: string) (losses: float[]) =
    let path = Path.Combine(dir, "losses.csv")
    let tmp = path + ".tmp"
    do
        use w = new StreamWriter(tmp)
        w.WriteLine "step,loss"
        losses
        |> Array.iteri (fun i l -> w.WriteLine(sprintf "%d,%s" (i + 1) (l.ToString("R", Globalization.CultureInfo.InvariantCulture))))
    File.Move(tmp, path, true)

/// Train (fresh or resumed) until the settings' steps, checkpointing and reporting; `meta` gives the
/// run's metadata for a total of seconds.
let private drive (ui: Ui) (trainer: ImageTrainer) (c: ImageTrainRun) (priorSeconds: float) (command: string) =
    let s = trainer.Settings.Train
    let total = s.Steps
    let startStep = trainer.Step
    let batch = float s.BatchSize
    let watch = Stopwatch.StartNew()
    let mutable windowStart = (trainer.Step, 0.0)
    let mutable rate = nan // images per second over the last window
    let mutable lastLine = 0.0
    let meta () =
        let m = toJson c (priorSeconds + watch.Elapsed.TotalSeconds)
        m.["command"] <- JsonValue.Create command
        m
    let modelMetadata () =
        let o = meta ()
        o.["dataset"] <- JsonValue.Create "fashion-mnist"
        o.["steps"] <- JsonValue.Create trainer.Step
        o.["batchSize"] <- JsonValue.Create s.BatchSize
        o.["learningRate"] <- JsonValue.Create s.LearningRate
        o.["labelDropout"] <- JsonValue.Create trainer.Settings.LabelDropout
        o.["emaDecay"] <- JsonValue.Create s.EmaDecay
        if trainer.Step > 0 then
            o.["finalLoss"] <- JsonValue.Create(Commands.finalLoss trainer.Losses)
        o
    let checkpoint () =
        ImageCheckpoint.save c.Out trainer (meta ()) c.Keep |> ignore
        ImageCheckpoint.saveModel c.Out trainer (modelMetadata ())
        writeLosses c.Out trainer.Losses
    let status (step: int) =
        let (s0, t0) = windowStart
        let now = watch.Elapsed.TotalSeconds
        if step > s0 && now > t0 then
            rate <- float (step - s0) * batch / (now - t0)
        let left = if rate > 0.0 then float (total - step) * batch / rate else nan
        let recent = trainer.Losses.[max 0 (step - max 1 c.LogEvery) ..] |> Array.average
        sprintf
            "step %d/%d  loss %s (mean of the last %d: %s)  %s images/s  elapsed %s  left %s"
            step
            total
            (inv trainer.Losses.[step - 1] "F4")
            (min step (max 1 c.LogEvery))
            (inv recent "F4")
            (inv rate "F1")
            (duration (priorSeconds + now))
            (if Double.IsNaN left then "?" else duration left)
    let afterStep (advance: string -> unit) (step: int) (_: float) =
        if step % c.LogEvery = 0 || step = total then
            let line = status step
            windowStart <- (step, watch.Elapsed.TotalSeconds)
            advance line
        if c.CheckpointEvery > 0 && step % c.CheckpointEvery = 0 && step < total then
            checkpoint ()
    let interactive = not ui.Quiet && ui.Console.Profile.Capabilities.Interactive
    if interactive then
        let mutable result = 0
        ui.Console
            .Progress()
            .AutoClear(false)
            .Columns(
                [| TaskDescriptionColumn() :> ProgressColumn
                   ProgressBarColumn()
                   PercentageColumn()
                   RemainingTimeColumn() |]
            )
            .Start(fun ctx ->
                let task = ctx.AddTask("training", true, float total)
                task.Value <- float startStep
                let step k l =
                    task.Value <- float k
                    afterStep (fun line -> task.Description <- Markup.Escape line) k l
                result <- ImageTraining.runUntil trainer total step)
        |> ignore
    else
        ImageTraining.runUntil trainer total (afterStep (fun line -> Ui.info ui line)) |> ignore
    checkpoint ()
    c.LossPlot
    |> Option.iter (fun p ->
        let dir = Path.GetDirectoryName(Path.GetFullPath p)
        Directory.CreateDirectory dir |> ignore
        Plots.save p 900 500 (Plots.lossPlot trainer.Losses (max 10 (total / 50))))
    let seconds = watch.Elapsed.TotalSeconds
    let steps = trainer.Step - startStep
    ui.Out.WriteLine(
        sprintf
            "trained %d steps (to step %d) in %s s (%s images/s); final loss %s; model saved to %s"
            steps
            trainer.Step
            (inv seconds "F1")
            (inv (float steps * batch / max seconds 1e-9) "F1")
            (inv (Commands.finalLoss trainer.Losses) "F4")
            c.Out
    )
    0

/// A fresh run.
let run (ui: Ui) (c: ImageTrainRun) (command: string) : int =
    if File.Exists c.Out then
        raise (ArgumentException(sprintf "--out must name a run directory, but '%s' is an existing file." c.Out, "--out"))
    if (ImageCheckpoint.latest c.Out).IsSome then
        raise (
            ArgumentException(
                sprintf "--out '%s' already holds a training run; continue it with --resume %s or choose another --out." c.Out c.Out,
                "--out"
            )
        )
    c.LossPlot
    |> Option.iter (fun p ->
        if not (p.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) then
            raise (ArgumentException(sprintf "--plot must name a .png file (got '%s')." p, "--plot")))
    use set = FashionMnist.load c.DataDir Split.Train
    let shape = set.SampleShape
    let classes = if c.ClassConditional then int (Array.max set.Labels.Value) + 1 else 0
    let baseConfig = UNet.defaultConfig (int shape.[0]) (int shape.[1]) (int shape.[2])
    let lowest = List.fold (fun h _ -> (h + 1) / 2) (int shape.[1]) (List.tail c.Multipliers)
    let config =
        { baseConfig with
            BaseChannels = c.Width
            ChannelMultipliers = c.Multipliers
            BlocksPerLevel = c.Blocks
            AttentionResolutions = (if c.Attention then [ lowest ] else [])
            Dropout = c.Dropout
            Classes = classes }
    let g = new torch.Generator(uint64 c.Seed, torch.CPU)
    let net =
        try
            new UNet(config, g)
        with _ ->
            g.Dispose()
            reraise ()
    use trainer =
        try
            ImageTraining.start c.Sde c.Settings net set g
        with _ ->
            net.Dispose()
            g.Dispose()
            reraise ()
    Ui.info
        ui
        (sprintf
            "training a %sU-Net (%d parameters) on %d images of %s, %s, %d steps of %d images, %d threads"
            (if classes > 0 then
                 sprintf "class-conditional (%d classes, label dropout %g) " classes c.Settings.LabelDropout
             else
                 "")
            net.ParameterCount
            set.Count
            set.Source
            (Sde.describe c.Sde)
            c.Settings.Train.Steps
            c.Settings.Train.BatchSize
            (torch.get_num_threads ()))
    Directory.CreateDirectory c.Out |> ignore
    drive ui trainer c 0.0 command

/// Continue the run in `dir` from its newest checkpoint.
let resume (ui: Ui) (dir: string) (command: string) : int =
    let checkpoint =
        match ImageCheckpoint.latest dir with
        | Some d -> d
        | None -> raise (ArgumentException(sprintf "--resume '%s' holds no checkpoint of a training run." dir, "--resume"))
    let m = ImageCheckpoint.metadata checkpoint
    let text (name: string) = m.[name].GetValue<string>()
    let number (name: string) = m.[name].GetValue<int>()
    use set = FashionMnist.load (text "dataDir") Split.Train
    use trainer = ImageCheckpoint.load checkpoint set None
    let c =
        { DataDir = text "dataDir"
          Sde = trainer.Sde
          Settings = trainer.Settings
          Seed = m.["seed"].GetValue<int64>()
          Width = trainer.Net.Config.BaseChannels
          Multipliers = trainer.Net.Config.ChannelMultipliers
          Blocks = trainer.Net.Config.BlocksPerLevel
          Attention = not trainer.Net.Config.AttentionResolutions.IsEmpty
          Dropout = trainer.Net.Config.Dropout
          ClassConditional = trainer.Net.Config.Classes > 0
          Out = dir
          CheckpointEvery = number "checkpointEvery"
          Keep = number "keep"
          LogEvery = number "logEvery"
          LossPlot = (if m.ContainsKey "plot" then Some(text "plot") else None) }
    Ui.info
        ui
        (sprintf
            "resuming %s at step %d of %d (epoch %d), %d threads"
            checkpoint
            trainer.Step
            trainer.Settings.Train.Steps
            trainer.Epoch
            (torch.get_num_threads ()))
    drive ui trainer c (m.["seconds"].GetValue<float>()) command

/// The image options of `train` (beside the options it shares with the MLP).
type Options =
    { Net: Option<string>
      DataDir: Option<string>
      Width: Option<int>
      Multipliers: Option<string>
      Blocks: Option<int>
      NoAttention: Option<bool>
      Dropout: Option<float>
      ClassConditional: Option<bool>
      LabelDropout: Option<float>
      Warmup: Option<Nullable<int>>
      GradClip: Option<float>
      Pixels: Option<string>
      CheckpointEvery: Option<int>
      Keep: Option<int>
      LogEvery: Option<int>
      Resume: Option<string> }

    member o.All: Option list =
        [ o.Net
          o.DataDir
          o.Width
          o.Multipliers
          o.Blocks
          o.NoAttention
          o.Dropout
          o.ClassConditional
          o.LabelDropout
          o.Warmup
          o.GradClip
          o.Pixels
          o.CheckpointEvery
          o.Keep
          o.LogEvery
          o.Resume ]

/// The image options, with their defaults.
let options () =
    let d = ImageTraining.defaults
    { Net = Opt.choice "--net" "Score network: mlp (2-D data), unet (images); auto picks by dataset" [ "auto"; "mlp"; "unet" ] (Some "auto")
      DataDir =
        Opt.text
            "--data-dir"
            "fashion-mnist: directory of MNIST-format train/t10k files (apt-get install dataset-fashion-mnist)"
            (Some FashionMnist.defaultDirectory)
      Width = Opt.intAtLeast 1 "--width" "U-Net: channels of the first level" (Some 32)
      Multipliers =
        Opt.text "--channel-mults" "U-Net: channel multiplier per level, e.g. 1,2,2 (each level halves the resolution)" (Some "1,2,2")
      Blocks = Opt.intAtLeast 1 "--blocks" "U-Net: residual blocks per level" (Some 2)
      NoAttention = Opt.flag "--no-attention" "U-Net: no self-attention at the lowest resolution"
      Dropout = Opt.inRange 0.0 1.0 "--dropout" "U-Net: dropout in the residual blocks" (Some 0.0)
      ClassConditional =
        Opt.flag
            "--class-conditional"
            "U-Net: condition on the class labels (with a null label: one model for unconditional and guided sampling)"
      LabelDropout =
        Opt.inRange 0.0 1.0 "--label-dropout" "With --class-conditional: probability of training on the null label instead" (Some 0.1)
      Warmup = Opt.intAtLeastOrNone 0 "--warmup" "Steps of linear learning-rate warm-up (default 100 for mlp, 500 for unet)"
      GradClip = Opt.positive "--grad-clip" "U-Net: clip the global gradient norm to this" (Some(d.Train.GradClip.Value))
      Pixels =
        Opt.choice "--pixels" "U-Net: scale pixels to [-1, 1] (centred) or [0, 1] (zero-one)" [ "centred"; "zero-one" ] (Some "centred")
      CheckpointEvery = Opt.intAtLeast 0 "--checkpoint-every" "U-Net: write a checkpoint every N steps (0: only at the end)" (Some 500)
      Keep = Opt.intAtLeast 1 "--keep" "U-Net: checkpoints kept" (Some 2)
      LogEvery = Opt.intAtLeast 1 "--log-every" "U-Net: a status line every N steps (and the progress bar's figures)" (Some 50)
      Resume = Opt.text "--resume" "Continue the image training run in this directory from its newest checkpoint" None }

let private parseMultipliers (text: string) =
    let parts = text.Split(',', StringSplitOptions.TrimEntries)
    let values =
        parts
        |> Array.map (fun p ->
            match Int32.TryParse p with
            | true, v when v > 0 -> v
            | _ ->
                raise (
                    ArgumentException(
                        sprintf "--channel-mults must be positive integers separated by commas (got '%s')." text,
                        "--channel-mults"
                    )
                ))
    List.ofArray values

/// A fresh image run from the parsed command line and the options shared with the MLP.
let ofParse
    (pr: ParseResult)
    (o: Options)
    (sde: Sde)
    (steps: int)
    (batch: int option)
    (lr: float option)
    (seed: int64)
    (emaDecay: float)
    (weighting: LossWeighting)
    (out: string)
    (plot: string option)
    =
    let d = ImageTraining.defaults
    let classConditional = pr.GetValue o.ClassConditional
    if not classConditional && not (isNull (pr.GetResult o.LabelDropout)) then
        raise (ArgumentException("--label-dropout needs --class-conditional.", "--label-dropout"))
    { DataDir = pr.GetValue o.DataDir
      Sde = sde
      Settings =
        { d with
            Train =
                { d.Train with
                    Steps = steps
                    BatchSize = defaultArg batch d.Train.BatchSize
                    LearningRate = defaultArg lr d.Train.LearningRate
                    WarmupSteps = (Option.ofNullable (pr.GetValue o.Warmup) |> Option.defaultValue d.Train.WarmupSteps)
                    EmaDecay = emaDecay
                    Weighting = weighting
                    GradClip = Some(pr.GetValue o.GradClip) }
            Pixels = (if Opt.choiceValue pr o.Pixels = "zero-one" then PixelRange.ZeroOne else PixelRange.Centred)
            LabelDropout = (if classConditional then pr.GetValue o.LabelDropout else 0.0) }
      Seed = seed
      Width = pr.GetValue o.Width
      Multipliers = parseMultipliers (pr.GetValue o.Multipliers)
      Blocks = pr.GetValue o.Blocks
      Attention = not (pr.GetValue o.NoAttention)
      Dropout = pr.GetValue o.Dropout
      ClassConditional = classConditional
      Out = out
      CheckpointEvery = pr.GetValue o.CheckpointEvery
      Keep = pr.GetValue o.Keep
      LogEvery = pr.GetValue o.LogEvery
      LossPlot = plot }
