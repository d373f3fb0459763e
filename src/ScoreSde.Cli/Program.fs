module ScoreSde.Cli.Program

open System
open System.CommandLine
open System.Globalization
open System.IO
open System.Runtime.InteropServices
open System.Text.RegularExpressions
open TorchSharp
open ScoreSde
open ScoreSde.Cli.SharedOptions

/// One line for an exception: its message without .NET's " (Parameter 'x')" and "Actual value was"
/// decorations (the library's messages name the parameter and the value themselves), newlines folded.
let describe (e: exn) =
    let lines =
        e.Message.Split([| '\r'; '\n' |], StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
        |> Array.filter (fun l -> not (e :? ArgumentOutOfRangeException && l.StartsWith "Actual value was"))
        |> Array.map (fun l -> if e :? ArgumentException then Regex.Replace(l, @"\s*\(Parameter '[^']*'\)", "") else l)
    let oneLine = String.Join(" ", lines)
    match e with
    | :? ArgumentException
    | :? IOException
    | :? UnauthorizedAccessException
    | :? InvalidOperationException
    | :? ArithmeticException -> oneLine
    | :? ExternalException -> sprintf "libtorch: %s" oneLine
    | _ -> sprintf "%s: %s" (e.GetType().Name) oneLine

/// Run a command body: any exception becomes one line on stderr and exit code 1.
let private guard (ui: Ui) (body: unit -> int) : int =
    try
        body ()
    with e ->
        ui.Err.WriteLine(sprintf "error: %s" (describe e))
        1

// ---- options shared by several commands ----

let private quiet = Opt.flag "--quiet" "No progress bars or status lines (results and errors only)"
let private threads =
    Opt.intAtLeast 1 "--threads" "CPU threads for libtorch (training the small networks here is fastest on 1)" (Some 1)

let private outDir = Opt.text "--out" "Folder for the figures and the trained model" (Some "out")
let private datasetNames = ToyDataset.all |> List.map ToyDataset.name

// ---- commands ----

let private demoCommand (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command("demo", "Train on a built-in dataset, sample with every sampler, print a table and write figures (the default command)")
    let dataset = Opt.choice "--dataset" "Built-in dataset" datasetNames (Some "ring")
    let trainSteps = Opt.intAtLeast 1 "--train-steps" "Training steps" (Some 6000)
    let n = Opt.intAtLeast 2 "--n" "Samples per sampler (and held-out points)" (Some 10000)
    let seed = Opt.seed "Seed of the data, the network and the samplers"
    let sde =
        Samplers.sdeOption "The SDE to train and sample with (paper defaults: beta 0.1..20; VE sigma 0.01..50)" (Some "vp")
    for o in [ dataset :> Option; sde; trainSteps; n; seed; outDir ] do
        cmd.Add o
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            Demo.run
                ui
                { Dataset = (ToyDataset.tryParse (pr.GetValue dataset)).Value
                  Sde = (Samplers.sdeValue pr sde).Value
                  TrainSteps = pr.GetValue trainSteps
                  Count = pr.GetValue n
                  Seed = pr.GetValue seed
                  Out = pr.GetValue outDir }))
    cmd

let private trainCommand (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command(
            "train",
            "Train a score network on a built-in dataset, a data file or Fashion-MNIST (a U-Net, with checkpoints and --resume) and save it"
        )
    let dataset = Opt.choice "--dataset" "Built-in dataset, or fashion-mnist" (datasetNames @ [ "fashion-mnist" ]) None
    let data = Opt.text "--data" "Training data: a .csv or .npy file of N points by D coordinates" None
    let points = Opt.intAtLeast 2 "--points" "Points drawn from a built-in dataset" (Some 20000)
    let steps = Opt.intAtLeast 1 "--steps" "Training steps" (Some Training.defaults.Steps)
    let batch = Opt.intAtLeastOrNone 1 "--batch-size" "Points (images) per training step (default 512 for mlp, 64 for unet)"
    let lr = Opt.positiveOrNone "--lr" "Adam's peak learning rate (default 5e-3 for mlp, 1e-3 for unet)"
    let seed = Opt.seed "Seed of the data, the initial weights and the training draws"
    let hidden = Opt.intAtLeast 1 "--hidden" "MLP: width of the hidden layers" (Some 128)
    let layers = Opt.intAtLeast 1 "--layers" "MLP: number of hidden layers" (Some 3)
    let weighting = Opt.choice "--weighting" "Loss weighting" [ "noise"; "likelihood" ] (Some "noise")
    let ema = Opt.inRange 0.0 1.0 "--ema" "Decay of the weights' exponential moving average" (Some Training.defaults.EmaDecay)
    let standardise =
        Opt.choice
            "--standardize"
            "Standardize each coordinate before training (auto: only for --data files)"
            [ "auto"; "yes"; "no" ]
            (Some "auto")
    let out = Opt.text "--out" "Model directory to write (config.json and weights.bin; for a U-Net also checkpoints)" None
    let plot =
        Opt.text "--plot" "Also write the training-loss curve to this .png file" None
        |> Opt.withExtensions [ ".png" ]
    let sde =
        Samplers.sdeOption "The SDE (stored in the model file; paper defaults: beta 0.1..20; VE sigma 0.01..50)" (Some "vp")
    let image = ImageTrainCommand.options ()
    for o in
        [ dataset :> Option
          sde
          data
          points
          steps
          batch
          lr
          seed
          hidden
          layers
          weighting
          ema
          standardise
          out
          plot ]
        @ image.All do
        cmd.Add o
    cmd.Validators.Add(fun r ->
        let has (o: Option) = not (isNull (r.GetResult o))
        if has image.Resume then
            for o in [ dataset :> Option; data; out ] do
                if has o then
                    r.AddError(sprintf "--resume continues a run with its own settings; leave out %s" o.Name)
        else
            match has dataset, has data with
            | true, true -> r.AddError "give either --dataset or --data, not both"
            | false, false ->
                r.AddError(sprintf "give --dataset (%s) or --data FILE" (String.Join("|", datasetNames @ [ "fashion-mnist" ])))
            | _ -> ()
            if not (has out) then
                r.AddError "give --out DIR (the model directory to write)")
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            let command = "scoresde " + String.Join(" ", pr.Tokens |> Seq.map (fun t -> t.Value))
            let images = not (isNull (pr.GetValue dataset)) && Opt.choiceValue pr dataset = "fashion-mnist"
            let net = Opt.choiceValue pr image.Net
            let weightingValue =
                if Opt.choiceValue pr weighting = "likelihood" then
                    LossWeighting.Likelihood
                else
                    LossWeighting.Noise
            match pr.GetValue image.Resume with
            | null when images ->
                if net = "mlp" then
                    raise (ArgumentException("--net mlp trains on 2-D points; fashion-mnist needs --net unet.", "--net"))
                ImageTrainCommand.run
                    ui
                    (ImageTrainCommand.ofParse
                        pr
                        image
                        (Samplers.sdeValue pr sde).Value
                        (pr.GetValue steps)
                        (Option.ofNullable (pr.GetValue batch))
                        (Option.ofNullable (pr.GetValue lr))
                        (pr.GetValue seed)
                        (pr.GetValue ema)
                        weightingValue
                        (pr.GetValue out)
                        (Option.ofObj (pr.GetValue plot)))
                    command
            | null ->
                if net = "unet" then
                    raise (ArgumentException("--net unet trains on images (--dataset fashion-mnist).", "--net"))
                let source =
                    match pr.GetValue data with
                    | null -> DataSource.BuiltIn((ToyDataset.tryParse (pr.GetValue dataset)).Value, pr.GetValue points)
                    | file -> DataSource.File file
                Commands.train
                    ui
                    { Source = source
                      Sde = (Samplers.sdeValue pr sde).Value
                      Steps = pr.GetValue steps
                      BatchSize = (Option.ofNullable (pr.GetValue batch) |> Option.defaultValue Training.defaults.BatchSize)
                      LearningRate = (Option.ofNullable (pr.GetValue lr) |> Option.defaultValue Training.defaults.LearningRate)
                      WarmupSteps = (Option.ofNullable (pr.GetValue image.Warmup) |> Option.defaultValue Training.defaults.WarmupSteps)
                      Seed = pr.GetValue seed
                      Hidden = pr.GetValue hidden
                      Layers = pr.GetValue layers
                      Weighting = weightingValue
                      EmaDecay = pr.GetValue ema
                      Standardise =
                        (match Opt.choiceValue pr standardise with
                         | "yes" -> Some true
                         | "no" -> Some false
                         | _ -> None)
                      Out = pr.GetValue out
                      LossPlot = Option.ofObj (pr.GetValue plot) }
            | dir -> ImageTrainCommand.resume ui dir command))
    cmd

/// The root command and its subcommands.
let rootCommand () =
    // A plain Command named after the executable (RootCommand takes the assembly's name, ScoreSde.Cli).
    let root =
        Command(
            "scoresde",
            "Train, sample and measure score-based generative models (VP, sub-VP and VE SDEs, Song et al. 2021). Run without arguments for the demo."
        )
    root.Add(Help.HelpOption(Recursive = true))
    root.Add(VersionOption())
    threads.Recursive <- true
    quiet.Recursive <- true
    root.Add threads
    root.Add quiet
    // Every action: set the thread count, build the UI, run the body under the error guard.
    let act (body: Ui -> int) (pr: ParseResult) : int =
        let ui = Ui.create (pr.InvocationConfiguration.Output) (pr.InvocationConfiguration.Error) (pr.GetValue quiet)
        guard ui (fun () ->
            Native.ensureLoaded ()
            torch.set_num_threads (pr.GetValue threads)
            body ui)
    root.Add(demoCommand act)
    root.Add(trainCommand act)
    root.Add(SampleCli.command act)
    root.Add(LikelihoodCli.command act)
    root.Add(ClassifierCommand.command act)
    root.Add(ClassifierCommand.frechetCommand act)
    root.Add(ImageEval.baselinesCommand act)
    root.Add(ImageEval.mergeCommand act)
    root.Add(Evaluate.command act)
    root.Add(ImageConditioning.command act)
    root.Add(GuidanceSweep.command act)
    root

/// A parse error's .NET type name in words: "expected type 'System.Nullable`1[System.Int32]'" becomes
/// "expected an integer".
let private typeInWords (message: string) =
    Regex.Replace(
        message,
        @"as expected type '([^']*)'",
        fun (m: Match) ->
            let t = m.Groups.[1].Value
            let words =
                if Regex.IsMatch(t, @"Int(16|32|64)|UInt|Byte") then "an integer"
                elif Regex.IsMatch(t, @"Double|Single|Decimal") then "a number"
                elif t.Contains "Boolean" then "true or false"
                else "a value of type " + t
            "as expected: " + words
    )

/// Run the command line with the given writers; returns the exit code (0 success, 1 failure,
/// 2 invalid command line). No arguments run `demo`.
let run (out: TextWriter) (err: TextWriter) (argv: string[]) : int =
    let args = if isNull argv || argv.Length = 0 then [| "demo" |] else argv
    let root = rootCommand ()
    let pr = root.Parse(args)
    if pr.Errors.Count > 0 then
        let messages =
            pr.Errors
            |> Seq.map (fun e -> typeInWords (e.Message.Replace('\n', ' ').Replace('\r', ' ').Trim()))
            |> Seq.distinct
            |> Seq.toList
        // "Required command was not provided" only adds noise next to the unknown word that caused it
        let messages =
            if messages.Length > 1 then
                messages |> List.filter (fun m -> not (m.StartsWith "Required command"))
            else
                messages
        let command = pr.CommandResult.Command
        let usage =
            if obj.ReferenceEquals(command, root) then
                "scoresde --help"
            else
                sprintf "scoresde %s --help" command.Name
        err.WriteLine(sprintf "error: %s (see '%s')" (String.Join("; ", messages)) usage)
        2
    else
        let config = InvocationConfiguration(Output = out, Error = err, EnableDefaultExceptionHandler = false)
        try
            pr.Invoke config
        with e ->
            err.WriteLine(sprintf "error: %s" (describe e))
            1

[<EntryPoint>]
let main argv =
    // Process-wide malloc settings belong to the executable, not to `run` (which tests call in-process).
    // SCORESDE_MALLOC_DEFAULTS=1 keeps glibc's defaults (to measure the difference).
    if Environment.GetEnvironmentVariable "SCORESDE_MALLOC_DEFAULTS" <> "1" then
        Allocator.tune () |> ignore
    run Console.Out Console.Error argv
