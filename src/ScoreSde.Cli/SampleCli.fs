/// `scoresde sample`: samples of a model directory or a TorchScript file, unconditional, inpainted or
/// class-conditional with classifier-free guidance, written as .csv, .npy or a PNG (a scatter plot or
/// an image grid).
module ScoreSde.Cli.SampleCli

open System
open System.CommandLine
open System.IO
open TorchSharp
open ScoreSde
open ScoreSde.Cli.SharedOptions

let private inv = Commands.inv

/// `sample`: draw samples from a saved or TorchScript model and write them to a file.
let run (ui: Ui) (c: SampleCommand) : int =
    let ext = Path.GetExtension(c.Out).ToLowerInvariant()
    if not (List.contains ext Commands.sampleExtensions) then
        raise (ArgumentException(sprintf "--out must end in %s (got '%s')." (String.Join(", ", Commands.sampleExtensions)) c.Out, "--out"))
    Outputs.checkWritable "--out" false c.Out
    let tsOptions =
        { Sde = defaultArg c.Sde Sde.standardVp
          TimeScale = c.TimeScale
          Output = ModelOutput.Noise
          SampleShape = c.Shape }
    // a class-conditional TorchScript model (--classes) or U-Net directory, guided by --label /
    // --guidance; else a model directory or a TorchScript forward(x, t)
    let model, info, owner, labels, conditional =
        match c.Condition.Classes with
        | Some classes ->
            let cm, owner = Conditioning.loadConditionalTorchScript c.ModelPath c.TimeScale ModelOutput.Noise classes
            try
                let model, labels = Conditioning.guided c.Condition cm classes c.Count
                let info =
                    { Sde = tsOptions.Sde
                      TimeScale = c.TimeScale
                      Output = ModelOutput.Noise
                      SampleShape = c.Shape
                      Dtype = torch.float32
                      Standardisation = None
                      Pixels = None
                      Description =
                        sprintf
                            "class-conditional TorchScript %s, label %d, guidance %g"
                            (Path.GetFileName c.ModelPath)
                            c.Condition.Label.Value
                            (defaultArg c.Condition.Guidance 0.0) }
                model, info, owner, Some labels, Some(cm, classes)
            with _ ->
                owner.Dispose()
                reraise ()
        | None ->
            let loaded = ModelFile.load c.ModelPath tsOptions
            try
                Commands.checkSde c.Sde loaded c.ModelPath
                match loaded.Network with
                | :? UNet as net when net.Config.Classes > 0 && c.Condition.Label.IsSome ->
                    // a class-conditional U-Net directory, guided by --label / --guidance
                    let cm = Conditioning.conditionalOf loaded.Info net
                    let classes = net.Config.Classes
                    let model, labels = Conditioning.guided c.Condition cm classes c.Count
                    let info =
                        { loaded.Info with
                            Description =
                                sprintf
                                    "%s, label %d, guidance %g"
                                    loaded.Info.Description
                                    c.Condition.Label.Value
                                    (defaultArg c.Condition.Guidance 0.0) }
                    model, info, (loaded :> IDisposable), Some labels, Some(cm, classes)
                | :? UNet as net when net.Config.Classes > 0 ->
                    if c.Condition.Guidance.IsSome then
                        raise (ArgumentException("--guidance needs --label (the class to sample).", "--guidance"))
                    loaded.Model, loaded.Info, (loaded :> IDisposable), None, None
                | _ ->
                    if c.Condition.Label.IsSome || c.Condition.Guidance.IsSome then
                        raise (
                            ArgumentException(
                                "--label and --guidance need a class-conditional model: a U-Net model directory trained with --class-conditional, or a TorchScript file whose forward takes (x, t, labels), with --classes K (K, the number of classes, is its null label).",
                                "--label"
                            )
                        )
                    loaded.Model, loaded.Info, (loaded :> IDisposable), None, None
            with _ ->
                (loaded :> IDisposable).Dispose()
                reraise ()
    use _owner = owner
    use _labels =
        match labels with
        | Some l -> l
        | None -> null
    let image = info.SampleShape.Length = 3
    if ext = ".png" && info.SampleShape <> [| 2L |] && not image then
        raise (
            ArgumentException(
                sprintf
                    "--out: a .png needs 2-D samples (a scatter plot) or images C x H x W (a grid), but this model's samples have shape [%s]; write .csv or .npy."
                    (String.Join(", ", info.SampleShape)),
                "--out"
            )
        )
    Ui.info ui (sprintf "model: %s" info.Description)
    let condition = Conditioning.condition c.Condition info c.Count
    use _condition =
        { new IDisposable with
            member _.Dispose() =
                condition
                |> Option.iter (fun k ->
                    k.Values.Dispose()
                    k.Mask.Dispose()
                    k.Basis |> Option.iter (fun b -> b.Dispose())) }
    // batches of the whole run (this shard's); one noise stream for the run, or one per sample
    let batches = Shards.batches c.Count (defaultArg c.BatchSize c.Count) c.Shard
    let perSample = c.PerSampleNoise || c.Shard.IsSome
    let priorStream, samplerStream = Noise.fromSeed c.Seed torch.CPU, Noise.fromSeed (c.Seed + 1L) torch.CPU
    let mutable nfe = 0
    let mutable seconds = 0.0
    let parts =
        [ for first, count in batches ->
              use scope = torch.NewDisposeScope()
              let slice (t: Tensor) =
                  if t.shape.[0] = int64 c.Count && count <> c.Count then
                      t.narrow (0L, int64 first, int64 count)
                  else
                      t
              let batchCondition = condition |> Option.map (fun k -> { k with Values = slice k.Values; Mask = slice k.Mask })
              // a guided model labels a whole batch (its labels are made in this scope)
              let model =
                  match conditional with
                  | Some(cm, classes) when count <> c.Count -> fst (Conditioning.guided c.Condition cm classes count)
                  | _ -> model
              let sampler = { c.Sampler with Sampling = { c.Sampler.Sampling with Condition = batchCondition } }
              let priorNoise, noise =
                  if perSample then
                      let n = Noise.perSampleFrom c.Seed first
                      n, n
                  else
                      priorStream, samplerStream
              let xT = Sampler.prior info.Sde (Array.append [| int64 count |] info.SampleShape) info.Dtype torch.CPU priorNoise
              let result, s, _ = Conditioning.namingOptions (fun () -> Commands.runSamplerWith ui sampler info.Sde model xT noise 0L)
              // evaluations per sample: the most any batch took (adaptive solvers differ by batch)
              nfe <- max nfe result.Nfe
              seconds <- seconds + s
              result.Samples.MoveToOuterDisposeScope() ]
    if parts.IsEmpty then
        raise (
            ArgumentException(
                sprintf
                    "--shard %d/%d gets no batch: %d samples in batches of %d make %d batches; give a smaller --batch-size or fewer shards."
                    c.Shard.Value.Index
                    c.Shard.Value.Count
                    c.Count
                    (defaultArg c.BatchSize c.Count)
                    ((c.Count + defaultArg c.BatchSize c.Count - 1) / defaultArg c.BatchSize c.Count),
                "--shard"
            )
        )
    use raw = torch.cat (List.toArray parts, 0L)
    for p in parts do
        p.Dispose()
    use samples =
        match info.Standardisation with
        | Some st -> Standardisation.invert st raw
        | None -> raw.clone ()
    Commands.ensureFinite
        (sprintf "the %s sampler's samples" c.Sampler.Name)
        "the non-finite check was off: --check-finite false; rerun with the check on to learn whether the model or the steps are at fault"
        samples
    match ext with
    | ".png" when image -> ImageGrid.write c.Out (defaultArg info.Pixels PixelRange.Centred) 1 samples
    | ".png" ->
        let cloud = Plots.cloud samples
        Plots.save c.Out 800 800 (Plots.scatterPlot (sprintf "%d samples: %s" c.Count c.Sampler.Label) (Some(Plots.limitsOf cloud)) cloud 1)
    | _ -> Outputs.writeFile c.Out (fun temporary -> DataFile.save temporary samples)
    let written = samples.shape.[0]
    ui.Out.WriteLine(
        sprintf
            "wrote %d samples%s to %s (%s, %d model evaluations, %s s)"
            written
            (match c.Shard with
             | Some sh ->
                 sprintf " (%s: samples %d..%d of %d)" (Shards.describe sh) (fst batches.Head) (fst batches.Head + int written - 1) c.Count
             | None -> "")
            c.Out
            c.Sampler.Label
            nfe
            (inv seconds "F2")
    )
    0

/// `sample`'s command-line definition.
let command (act: (Ui -> int) -> ParseResult -> int) =
    let cmd = Command("sample", "Draw samples from a trained model and write them to .csv, .npy or .png")
    let n = Opt.intAtLeast 1 "--n" "Number of samples" (Some 1000)
    let seed = Opt.seed "Seed of the prior draw and the sampler's noise"
    let out =
        Opt.required "--out" "Output file: .csv, .npy or .png (2-D samples)"
        |> Opt.withExtensions Commands.sampleExtensions
    let inpaint =
        Opt.text
            "--inpaint"
            "Known values (.npy or .csv): one sample's shape or one per sample; the samples equal them where --mask is nonzero"
            None
    let mask =
        Opt.text "--mask" "With --inpaint: .npy or .csv, nonzero where a value is known (broadcastable to the samples)" None
    let basis =
        Opt.text "--basis" "With --inpaint: .npy or .csv orthonormal C x C matrix; --inpaint then holds coordinates in its basis" None
    let replacement =
        Conditioning.replacementOption
            "With --inpaint: 'fresh' redraws the known part after every update (the paper's, default for pc), 'fixed' keeps one latent for it (default for ode and dpm)"
    let label =
        Opt.intAtLeastOrNone
            0
            "--label"
            "Class to sample from a class-conditional model (a U-Net directory trained with --class-conditional, or TorchScript with --classes)"
    let guidance =
        Opt.nonNegativeOrNone
            "--guidance"
            "With --label: classifier-free guidance weight w, (1 + w) conditional - w unconditional (default 0)"
    let classes =
        Opt.intAtLeastOrNone
            1
            "--classes"
            "TorchScript class-conditional models (forward(x, t, labels)): the number of classes K; label K is the null label"
    let batch = Opt.intAtLeastOrNone 1 "--batch-size" "Samples per sampler run (default: all in one)"
    for o in [ batch :> Option; noiseOption; shardOption ] do
        cmd.Add o
    for o in
        [ modelOption :> Option
          sdeForModel
          Samplers.choice
          Samplers.steps
          Samplers.eps
          Samplers.rtol
          Samplers.atol
          Samplers.checkFinite
          n
          seed
          out
          timeScale
          shape
          inpaint
          mask
          basis
          replacement
          label
          guidance
          classes ] do
        cmd.Add o
    Samplers.addOptions cmd
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            run
                ui
                { ModelPath = pr.GetValue modelOption
                  Sde = Samplers.sdeValue pr sdeForModel
                  Sampler = Samplers.fromCommandLine pr
                  Count = pr.GetValue n
                  Seed = pr.GetValue seed
                  Out = pr.GetValue out
                  TimeScale = pr.GetValue timeScale
                  Shape = parseShape (pr.GetValue shape)
                  Condition =
                    { Inpaint = Option.ofObj (pr.GetValue inpaint)
                      Mask = Option.ofObj (pr.GetValue mask)
                      Basis = Option.ofObj (pr.GetValue basis)
                      Replacement = Conditioning.replacementValue pr replacement
                      Label = Option.ofNullable (pr.GetValue label)
                      Guidance = Option.ofNullable (pr.GetValue guidance)
                      Classes = Option.ofNullable (pr.GetValue classes) }
                  BatchSize = Option.ofNullable (pr.GetValue batch)
                  PerSampleNoise = perSampleNoise pr
                  Shard = shardValue pr }))
    cmd
