namespace ScoreSde

open System
open System.Diagnostics
open TorchSharp

/// Settings of image training: the denoising score-matching settings of `Training` (Observer is
/// called after every step) and what images add.
type ImageTrainSettings =
    {
        Train: TrainSettings
        /// The range the 8-bit pixels are scaled to (stored with the model).
        Pixels: PixelRange
        /// Class-conditional networks: probability that a training label is replaced by the null
        /// label, so that one network learns the conditional and the unconditional model (the
        /// classifier-free guidance recipe; 0: always the true label).
        LabelDropout: float
    }

/// Denoising score matching of a `UNet` on an `ImageSet`, resumable bit for bit. Each epoch visits the
/// images in a fresh random order (a permutation drawn from the generator), in batches of BatchSize
/// (the last partial batch of an epoch is skipped). Every random draw (permutations, null labels,
/// times, noise, dropout masks) comes from the one generator, so the state of a run is: the network,
/// its EMA, Adam's moments, the step, the generator's state, the epoch's permutation and the position
/// in it (`ImageCheckpoint` saves and restores exactly these).
type ImageTrainer
    internal
    (
        sde: Sde,
        settings: ImageTrainSettings,
        net: UNet,
        ema: UNet,
        images: ImageSet,
        generator: torch.Generator,
        order: Tensor,
        position: int64,
        epoch: int,
        losses: float list
    ) =
    let parameters = net.parameters () |> Seq.toArray
    let emaParameters = ema.parameters () |> Seq.toArray
    let adam = new Adam(parameters)
    let mutable order = order
    let mutable position = position
    let mutable epoch = epoch
    let losses = ResizeArray<float>(losses)
    let n = images.Count
    let batch = int64 settings.Train.BatchSize
    let labels =
        if net.Config.Classes = 0 then
            None
        else
            Some(torch.tensor (images.Labels.Value, dtype = torch.int64))
    let noise = Noise.fromGenerator generator
    let mutable seconds = 0.0

    /// The network being trained (owned by the trainer).
    member _.Net = net
    /// The exponential moving average of the weights: the network to sample with (owned by the trainer).
    member _.Ema = ema
    member _.Sde = sde
    member _.Settings = settings
    member _.Images = images
    member _.Adam = adam
    /// The generator every draw comes from (owned by the trainer).
    member _.Generator = generator
    /// The current epoch's order of the images and the position of the next batch in it.
    member _.Order = order
    member _.Position = position
    /// Epochs started (1 during the first).
    member _.Epoch = epoch
    /// Steps done so far.
    member _.Step = losses.Count
    /// The loss of every step done so far.
    member _.Losses = losses.ToArray()
    /// Wall-clock seconds spent in steps by this trainer (not counting earlier runs of a resumed one).
    member _.Seconds = seconds

    /// One training step; returns its loss.
    member _.TakeStep() : float =
        let k = losses.Count
        let watch = Stopwatch.StartNew()
        net.train ()
        use scope = torch.NewDisposeScope()
        if position + batch > n then
            order.Dispose()
            order <- torch.randperm(n, generator = generator).DetachFromDisposeScope()
            position <- 0L
            epoch <- epoch + 1
        let idx = order.narrow (0L, position, batch)
        position <- position + batch
        let x0 = ImageSet.batch settings.Pixels net.Dtype idx images
        let y =
            labels
            |> Option.map (fun all ->
                let y = all.index_select (0L, idx)
                if settings.LabelDropout > 0.0 then
                    let u = torch.rand ([| batch |], dtype = torch.float64, generator = generator)
                    use p = Tensors.scalar settings.LabelDropout
                    use nullLabel = Scalar.op_Implicit (int64 net.Config.Classes)
                    use nulls = torch.full ([| batch |], nullLabel, dtype = torch.int64)
                    torch.where (u.lt (p), nulls, y)
                else
                    y)
        let u = torch.rand ([| batch |], dtype = torch.float64, generator = generator)
        let eps = settings.Train.Eps
        let times = Tensors.toHost u |> Array.map (fun v -> eps + (1.0 - eps) * v)
        let t = torch.tensor (times, dtype = net.Dtype)
        let z = torch.empty_like (x0)
        noise.Fill z
        Gradients.zero parameters
        let model (x: Tensor) (t: Tensor) =
            net.Forward(
                x,
                t,
                (match y with
                 | Some l -> l
                 | None -> null)
            )
        let l = Training.loss sde settings.Train.Weighting model x0 t z
        l.backward ()
        settings.Train.GradClip |> Option.iter (Gradients.clipNorm parameters)
        adam.Step(Training.learningRate settings.Train k)
        let value = l.detach().to_type(torch.float64).item<float>()
        if Double.IsNaN value || Double.IsInfinity value then
            raise (
                InvalidOperationException(
                    sprintf "Training diverged at step %d (loss %g); lower the learning rate (%g)." k value settings.Train.LearningRate
                )
            )
        losses.Add value
        Ema.update emaParameters parameters (Ema.decayAt settings.Train.EmaDecay k)
        seconds <- seconds + watch.Elapsed.TotalSeconds
        value

    interface IDisposable with
        member _.Dispose() =
            (adam :> IDisposable).Dispose()
            labels |> Option.iter (fun l -> l.Dispose())
            order.Dispose()
            ema.Dispose()
            net.Dispose()
            generator.Dispose()

[<RequireQualifiedAccess>]
module ImageTraining =
    /// Defaults for Fashion-MNIST-sized images on a CPU: batch 64, Adam at 1e-3 after 500 warm-up
    /// steps with a half-cosine decay, gradient norm clipped at 1, EMA 0.999, noise weighting, pixels
    /// centred in [-1, 1], unconditional (no label dropout).
    let defaults =
        { Train =
            { Training.defaults with
                Steps = 5000
                BatchSize = 64
                LearningRate = 1e-3
                WarmupSteps = 500
                CosineDecay = true
                EmaDecay = 0.999
                GradClip = Some 1.0 }
          Pixels = PixelRange.Centred
          LabelDropout = 0.0 }

    /// Validate settings against the network and the images; failures name the field.
    let validate (settings: ImageTrainSettings) (net: UNet) (images: ImageSet) =
        Training.validate settings.Train
        Check.finite "LabelDropout" settings.LabelDropout
        if settings.LabelDropout < 0.0 || settings.LabelDropout >= 1.0 then
            Check.fail "LabelDropout" settings.LabelDropout "in [0, 1)"
        let c = net.Config
        if images.SampleShape <> [| int64 c.Channels; int64 c.Height; int64 c.Width |] then
            Check.fail "images" images.SampleShape (sprintf "images of the network's shape [%d, %d, %d]" c.Channels c.Height c.Width)
        if images.Count < int64 settings.Train.BatchSize then
            Check.fail "BatchSize" settings.Train.BatchSize (sprintf "at most the number of images (%d)" images.Count)
        if c.Classes > 0 then
            match images.Labels with
            | None -> Check.fail "images" images.Source "labelled images for a class-conditional network"
            | Some l when l |> Array.exists (fun v -> v < 0L || v >= int64 c.Classes) ->
                Check.fail "images" images.Source (sprintf "labels in 0 .. %d (the network's classes)" (c.Classes - 1))
            | Some _ -> ()
        elif settings.LabelDropout > 0.0 then
            Check.fail "LabelDropout" settings.LabelDropout "0 for an unconditional network (Classes = 0)"

    /// Start training `net` (from now on owned by the trainer, like `generator`) on `images` (the
    /// caller's; not modified, and to be kept alive while the trainer runs). The EMA starts as a copy
    /// of the network; the first epoch's order is drawn from the generator.
    let start (sde: Sde) (settings: ImageTrainSettings) (net: UNet) (images: ImageSet) (generator: torch.Generator) =
        Native.ensureLoaded ()
        Check.notNull "net" net
        Check.notNull "images" images
        Check.notNull "generator" generator
        Sde.validate sde
        validate settings net images
        if net.Config.Dropout > 0.0 then
            net.DropoutGenerator <- generator
        let ema = UNet.copy net
        let order = torch.randperm (images.Count, generator = generator)
        new ImageTrainer(sde, settings, net, ema, images, generator, order, 0L, 1, [])

    /// Steps until the trainer has done `settings.Train.Steps` or `until` steps, whichever is first,
    /// calling `afterStep` after each (with the step count done and the loss) and the settings'
    /// Observer. Returns the number of steps done.
    let runUntil (trainer: ImageTrainer) (until: int) (afterStep: int -> float -> unit) =
        Check.notNull "trainer" trainer
        let last = min until trainer.Settings.Train.Steps
        while trainer.Step < last do
            let loss = trainer.TakeStep()
            trainer.Settings.Train.Observer |> Option.iter (fun f -> f (trainer.Step - 1) loss)
            afterStep trainer.Step loss
        trainer.Net.eval ()
        trainer.Ema.eval ()
        trainer.Step
