/// `scoresde likelihood`: bits/dim through the probability-flow ODE, of the points of a data file
/// (`Likelihoods`) or of dataset images (`ImageEval`).
module ScoreSde.Cli.LikelihoodCli

open System.CommandLine
open ScoreSde
open ScoreSde.Cli.SharedOptions

/// `likelihood`'s command-line definition: points of a data file, or dataset images (`ImageEval`).
let command (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command("likelihood", "Bits/dim of data under a model, through the probability-flow ODE (Song et al. 2021, appendix D.2)")
    let data = Opt.text "--data" "Points to evaluate: a .csv or .npy file of N points by D coordinates" None
    let dataset =
        Opt.choice "--dataset" "Images to evaluate instead of --data (dequantised 8-bit pixels)" [ "fashion-mnist" ] None
    let dataDir =
        Opt.text "--data-dir" "With --dataset: the directory of MNIST-format files" (Some FashionMnist.defaultDirectory)
    let split = Opt.choice "--split" "With --dataset: the split" [ "test"; "train" ] (Some "test")
    let count = Opt.intAtLeastOrNone 1 "--n" "With --dataset: only the first N images"
    let pixels =
        Opt.choice
            "--pixels"
            "With --dataset, TorchScript models: their pixel range (a model directory stores its own)"
            [ "centred"; "zero-one" ]
            None
    let rtol = Opt.positive "--rtol" "Relative tolerance of the adaptive ODE solver" (Some 1e-5)
    let atol = Opt.positive "--atol" "Absolute tolerance of the adaptive ODE solver" (Some 1e-5)
    let eps = Opt.inRange 1e-7 1.0 "--eps" "Time at which the data are taken (the integration starts there)" (Some 1e-5)
    let hutchinson =
        Opt.intAtLeastOrNone 1 "--hutchinson" "Estimate the divergence with this many Rademacher probes per point (default: exact trace)"
    let seed = Opt.seed "Seed of the Hutchinson probes"
    let batch = Opt.intAtLeast 1 "--batch-size" "Points per ODE solve" (Some 1000)
    let out =
        Opt.text "--out" "Also write each point's log-likelihood (nats) and bits/dim to this .csv or .npy file" None
        |> Opt.withExtensions [ ".csv"; ".npy" ]
    for o in
        [ modelOption :> Option
          sdeForModel
          data
          rtol
          atol
          eps
          hutchinson
          seed
          batch
          out
          timeScale
          dataset
          dataDir
          split
          count
          pixels
          noiseOption
          shardOption ] do
        cmd.Add o
    cmd.Validators.Add(fun r ->
        match isNull (r.GetResult data), isNull (r.GetResult dataset) with
        | false, false -> r.AddError "give either --data or --dataset, not both"
        | true, true -> r.AddError "give --data FILE or --dataset fashion-mnist"
        | _ -> ())
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            let k = pr.GetValue hutchinson
            let c: LikelihoodCommand =
                { ModelPath = pr.GetValue modelOption
                  Sde = Samplers.sdeValue pr sdeForModel
                  Data = pr.GetValue data
                  Rtol = pr.GetValue rtol
                  Atol = pr.GetValue atol
                  Eps = pr.GetValue eps
                  Hutchinson = (if k.HasValue then Some k.Value else None)
                  Seed = pr.GetValue seed
                  BatchSize = pr.GetValue batch
                  Out = Option.ofObj (pr.GetValue out)
                  TimeScale = pr.GetValue timeScale
                  PerSampleNoise = perSampleNoise pr
                  Shard = shardValue pr }
            match pr.GetValue dataset with
            | null -> Likelihoods.likelihood ui c
            | _ ->
                ImageEval.likelihood
                    ui
                    c
                    { DataDir = pr.GetValue dataDir
                      Split = (if Opt.choiceValue pr split = "train" then Split.Train else Split.Test)
                      Count = Option.ofNullable (pr.GetValue count)
                      Pixels = pr.GetValue pixels |> Option.ofObj |> Option.bind Pixels.tryParse }))
    cmd
