namespace ScoreSde.Cli

open System
open System.Diagnostics
open System.IO
open TorchSharp
open ScoreSde

/// The `demo` command: everything the library does on one built-in dataset, measured and plotted.
[<RequireQualifiedAccess>]
module Demo =
    /// `demo`: train on a built-in dataset, sample with every sampler, measure and plot.
    let run (ui: Ui) (c: DemoCommand) : int =
        let total = Stopwatch.StartNew()
        let sde = c.Sde
        Outputs.checkWritable "--out" true c.Out
        Directory.CreateDirectory c.Out |> ignore
        let name = ToyDataset.name c.Dataset
        // Training data and held-out data come from independent seeds.
        use g = new torch.Generator(uint64 c.Seed, torch.CPU)
        use gHeld = new torch.Generator(Noise.sampleSeed c.Seed 1_000_003, torch.CPU)
        use data = ToyDataset.sample c.Dataset 20000 torch.float32 g
        use held = ToyDataset.sample c.Dataset c.Count torch.float32 gHeld
        let trainCommand =
            { Source = DataSource.BuiltIn(c.Dataset, 20000)
              Sde = sde
              Steps = c.TrainSteps
              BatchSize = Training.defaults.BatchSize
              WarmupSteps = Training.defaults.WarmupSteps
              LearningRate = Training.defaults.LearningRate
              Seed = c.Seed
              Hidden = 128
              Layers = 3
              Weighting = LossWeighting.Noise
              EmaDecay = Training.defaults.EmaDecay
              Standardise = Some false
              Out = Path.Combine(c.Out, "model")
              LossPlot = None }
        use net = new ScoreNet(ScoreNet.defaultConfig 2, g)
        Ui.info
            ui
            (sprintf
                "demo: %s dataset, 20000 training points, %d held-out points; MLP score network with %d parameters; %s"
                name
                c.Count
                net.ParameterCount
                (Sde.describe sde))
        let r = Commands.trainWithProgress ui sde (Commands.trainSettings trainCommand) net data g
        use ema = r.Ema
        (use staged = new Outputs.StagedFolder(trainCommand.Out)
         ModelFile.save staged.Temporary ema sde None (Commands.trainingMetadata trainCommand name 20000L r)
         staged.Commit())
        let model = ScoreNet.toModel ema
        // Every sampler starts from the same prior draw.
        let noise = Noise.fromSeed (c.Seed + 1L) torch.CPU
        use xT = Sampler.prior sde [| int64 c.Count; 2L |] torch.float32 torch.CPU noise
        let runs =
            [ for entry in Samplers.all ->
                  let run = entry.Demo
                  let result, seconds, paths = Commands.runSampler ui run sde model xT (c.Seed + 2L) 6L
                  run, result, seconds, paths ]
        // Held-out bits/dim through the probability-flow ODE (exact divergence, Dopri5 at 1e-5) on
        // the first points of the held-out set, and the data's exact bits/dim on the same points.
        let likelihoodPoints = min 1000L held.shape.[0]
        use heldSubset = held.narrow (0L, 0L, likelihoodPoints)
        let _, bpd, likNfe, likSeconds =
            Likelihoods.logLikelihoods
                ui
                sde
                model
                None
                (Likelihoods.likelihoodSettings 1e-5 1e-5 1e-5 None)
                (Noise.fromSeed c.Seed torch.CPU)
                1000
                heldSubset
        let bpdText (v: float[]) = let m, se = Likelihoods.meanAndError v in sprintf "%s +- %s" (Commands.inv m "F3") (Commands.inv se "F3")
        let exactBpd =
            ToyDataset.tryLogDensity c.Dataset heldSubset
            |> Option.map (fun lp -> use lp = lp in Commands.host lp |> Array.map (fun v -> -v / (2.0 * Math.Log 2.0)))
        let sw (x: Tensor) = Metrics.slicedWasserstein1 x held
        use trainSubset = data.narrow (0L, 0L, min (int64 c.Count) data.shape.[0])
        let rows =
            [ for run, result, seconds, _ in runs do
                  yield
                      [ run.Label
                        string result.Nfe
                        Commands.inv seconds "F2"
                        (if Commands.allFinite result.Samples then Commands.inv (sw result.Samples) "F4" else "diverged")
                        "" ]
              yield
                  [ "likelihood: ODE Dopri5, exact divergence"
                    string likNfe
                    Commands.inv likSeconds "F2"
                    ""
                    bpdText bpd ]
              yield
                  [ "reference: training data"
                    ""
                    ""
                    Commands.inv (sw trainSubset) "F4"
                    (match exactBpd with
                     | Some v -> bpdText v + " (exact density)"
                     | None -> "") ]
              yield
                  [ sprintf "reference: prior N(0, %gI)" (Sde.priorStd sde ** 2.0)
                    ""
                    ""
                    Commands.inv (sw xT) "F4"
                    "" ] ]
        Ui.table
            ui
            (sprintf
                "%d samples: sliced Wasserstein-1 to %d held-out points (128 directions); bits/dim of %d held-out points"
                c.Count
                c.Count
                likelihoodPoints)
            [ "sampler"; "model evals"; "seconds"; "sliced W1"; "bits/dim" ]
            rows
        Ui.table
            ui
            "training"
            [ "steps"; "batch"; "seconds"; "steps/s"; "samples/s"; "final loss" ]
            [ [ string c.TrainSteps
                string trainCommand.BatchSize
                Commands.inv r.Seconds "F1"
                Commands.inv r.StepsPerSecond "F0"
                Commands.inv (r.StepsPerSecond * float trainCommand.BatchSize) "F0"
                Commands.inv (Commands.finalLoss r.Losses) "F4" ] ]
        // Figures.
        let dataCloud = Plots.cloud held
        let limits = Some(Plots.limitsOf dataCloud)
        let files = ResizeArray<string>()
        let out (file: string) =
            let p = Path.Combine(c.Out, file)
            files.Add p
            p
        Plots.save (out "data.png") 700 700 (Plots.scatterPlot (sprintf "%s: held-out data" name) limits dataCloud 0)
        for run, result, _, _ in runs do
            let title = sprintf "%s (%d evaluations)" run.Label result.Nfe
            Plots.save (out (sprintf "samples-%s.png" run.Name)) 700 700 (Plots.scatterPlot title limits (Plots.cloud result.Samples) 1)
        let trajectoryLimits = Some(Plots.limitsOf (Plots.cloud xT))
        Plots.saveRow
            (out "trajectories.png")
            500
            500
            [ for run, _, _, paths in runs ->
                  Plots.trajectoryPlot (sprintf "%s: paths from the prior (black)" run.Name) trajectoryLimits dataCloud paths 1 ]
        Plots.save (out "loss.png") 800 500 (Plots.lossPlot r.Losses 100)
        Plots.saveRow
            (out "overview.png")
            360
            360
            [ yield Plots.scatterPlot "data" limits dataCloud 0
              for run, result, _, _ in runs ->
                  Plots.scatterPlot (sprintf "%s, %d evals" run.Name result.Nfe) limits (Plots.cloud result.Samples) 1 ]
        for _, result, _, _ in runs do
            result.Samples.Dispose()
        Ui.info ui (sprintf "wrote %s and the model %s" (String.Join(", ", files |> Seq.map Path.GetFileName)) trainCommand.Out)
        ui.Out.WriteLine(sprintf "demo finished in %s s; figures in %s" (Commands.inv total.Elapsed.TotalSeconds "F1") c.Out)
        0
