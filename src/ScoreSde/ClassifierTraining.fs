namespace ScoreSde

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp

/// Settings of classifier training.
type ClassifierSettings =
    {
        /// Passes over the training images (each in a fresh random order).
        Epochs: int
        /// Images per step.
        BatchSize: int
        /// Adam's peak learning rate (linear warm-up, then a half cosine to zero).
        LearningRate: float
        /// Steps of linear warm-up.
        WarmupSteps: int
        /// How the images' levels map to the classifier's inputs.
        Pixels: PixelRange
        /// For a time-conditional classifier: alpha_t and sigma_t of the SDE's marginal; each image
        /// is then classified as x_t = alpha_t x + sigma_t z with t ~ U(Eps, 1) and z ~ N(0, I).
        Marginal: (float -> float * float) option
        /// Lower end of the training times (time-conditional only).
        Eps: float
        /// Called after every step with the step index and its loss.
        Observer: (int -> float -> unit) option
    }

/// What classifier training produced.
type ClassifierTrainResult =
    {
        /// The cross-entropy loss of every step.
        Losses: float[]
        /// Wall-clock seconds of the training loop.
        Seconds: float
    }

/// Training, evaluating and saving `Classifier`s. Every random draw (the order of the images, the
/// times and noise of time-conditional training) comes from the caller's generator.
[<RequireQualifiedAccess>]
module ClassifierTraining =
    /// Defaults that train the default Fashion-MNIST classifier in a few minutes on two CPU cores.
    let defaults =
        { Epochs = 2
          BatchSize = 128
          LearningRate = 2e-3
          WarmupSteps = 100
          Pixels = PixelRange.Centred
          Marginal = None
          Eps = 1e-3
          Observer = None }

    /// A classifier for c x h x w images in `classes` classes: stages of 32, 64 and 128 channels
    /// (28, 14 and 7 pixels high for 28 x 28 images), 128 features, 8 groups, no time input.
    let defaultConfig (channels: int) (height: int) (width: int) (classes: int) =
        { Channels = channels
          Height = height
          Width = width
          Widths = [ 32; 64; 128 ]
          Features = 128
          Classes = classes
          Groups = 8
          TimeConditional = false
          FourierFeatures = 32
          FourierScale = 16.0 }

    /// The learning rate of step k of `total`.
    let learningRate (settings: ClassifierSettings) (total: int) (k: int) =
        let warm = if settings.WarmupSteps > 0 then min 1.0 (float (k + 1) / float settings.WarmupSteps) else 1.0
        settings.LearningRate * warm * 0.5 * (1.0 + Math.Cos(Math.PI * float k / float total))

    /// Train `net` in place on labelled images; returns the losses and the time taken.
    let train (settings: ClassifierSettings) (net: Classifier) (images: ImageSet) (generator: torch.Generator) : ClassifierTrainResult =
        Native.ensureLoaded ()
        Check.notNull "net" net
        Check.notNull "images" images
        Check.notNull "generator" generator
        Check.positiveInt "Epochs" settings.Epochs
        Check.positiveInt "BatchSize" settings.BatchSize
        Check.positive "LearningRate" settings.LearningRate
        Check.nonNegativeInt "WarmupSteps" settings.WarmupSteps
        if settings.Eps <= 0.0 || settings.Eps >= 1.0 then
            Check.fail "Eps" settings.Eps "in (0, 1)"
        if settings.Marginal.IsSome <> net.Config.TimeConditional then
            Check.fail "Marginal" settings.Marginal "given exactly when the classifier is time-conditional"
        let labels =
            match images.Labels with
            | Some l -> l
            | None -> Check.fail "images" images.Source "labelled images"
        if labels |> Array.exists (fun l -> l < 0L || l >= int64 net.Config.Classes) then
            Check.fail "images" images.Source (sprintf "labels in 0 .. %d" (net.Config.Classes - 1))
        if
            images.SampleShape
            <> [| int64 net.Config.Channels; int64 net.Config.Height; int64 net.Config.Width |]
        then
            Check.fail "images" images.SampleShape "images of the classifier's shape"
        use labelTensor = torch.tensor labels
        let n = images.Count
        let batch = min (int64 settings.BatchSize) n
        let perEpoch = int (n / batch)
        let total = perEpoch * settings.Epochs
        let parameters = net.parameters () |> Seq.toArray
        use adam = new Adam(parameters)
        let losses = Array.zeroCreate total
        let watch = Stopwatch.StartNew()
        net.train ()
        for epoch in 0 .. settings.Epochs - 1 do
            use order = torch.randperm (n, generator = generator)
            for s in 0 .. perEpoch - 1 do
                let k = epoch * perEpoch + s
                use scope = torch.NewDisposeScope()
                let idx = order.narrow (0L, int64 s * batch, batch)
                let x = ImageSet.batch settings.Pixels net.Dtype idx images
                let y = labelTensor.index_select (0L, idx)
                let x, t =
                    match settings.Marginal with
                    | None -> x, null
                    | Some marginal ->
                        let u = torch.rand ([| batch |], dtype = torch.float64, generator = generator)
                        let times = Tensors.toHost u |> Array.map (fun v -> settings.Eps + (1.0 - settings.Eps) * v)
                        let coefficients = times |> Array.map marginal
                        let z = torch.randn (x.shape, dtype = net.Dtype, generator = generator)
                        let xt =
                            Tensors.add
                                (Tensors.perSample (Array.map fst coefficients) x * x)
                                (Tensors.perSample (Array.map snd coefficients) x * z)
                        xt, torch.tensor (times, dtype = net.Dtype)
                Gradients.zero parameters
                let loss = torch.nn.functional.cross_entropy (net.Logits(x, t), y)
                loss.backward ()
                adam.Step(learningRate settings total k)
                let value = loss.item<float32>() |> float
                if not (Double.IsFinite value) then
                    raise (
                        InvalidOperationException(
                            sprintf "Classifier training diverged at step %d (loss %g); lower the learning rate." k value
                        )
                    )
                losses.[k] <- value
                settings.Observer |> Option.iter (fun f -> f k value)
        net.eval ()
        { Losses = losses; Seconds = watch.Elapsed.TotalSeconds }

    /// Apply f to consecutive batches of n items and concatenate the results along dimension 0.
    let private batched (n: int64) (batchSize: int) (f: int64 -> int64 -> Tensor) : Tensor =
        Check.positiveInt "batchSize" batchSize
        use scope = torch.NewDisposeScope()
        let parts = [| for start in 0L .. int64 batchSize .. n - 1L -> f start (min (int64 batchSize) (n - start)) |]
        torch.cat(parts, 0L).MoveToOuterDisposeScope()

    /// Penultimate features [N, Features] of images x [N, C, H, W] in the classifier's input range,
    /// at time t (ignored unless time-conditional: then a [N] tensor or one value), in batches.
    let features (net: Classifier) (batchSize: int) (t: Tensor) (x: Tensor) : Tensor =
        Check.notNull "net" net
        Check.floating "x" x
        use _noGrad = torch.no_grad ()
        batched (x.size 0) batchSize (fun start count ->
            use xb = x.narrow (0L, start, count)
            use tb = if isNull t || t.numel () = 1L then null else t.narrow (0L, start, count)
            net.Features(xb, (if isNull tb then t else tb)))

    /// Predicted labels (int64 [N]) of clean images from an image set (t = 0 for time-conditional nets).
    let predict (net: Classifier) (pixels: PixelRange) (batchSize: int) (images: ImageSet) : Tensor =
        Check.notNull "net" net
        Check.notNull "images" images
        use _noGrad = torch.no_grad ()
        use t0 = torch.zeros ([| 1L |], dtype = net.Dtype)
        batched images.Count batchSize (fun start count ->
            use scope = torch.NewDisposeScope()
            use first = Tensors.scalar (float start)
            use stop = Tensors.scalar (float (start + count))
            use step = Tensors.scalar 1.0
            let idx = torch.arange (first, stop, step, dtype = torch.int64)
            let x = ImageSet.batch pixels net.Dtype idx images
            net.Logits(x, t0).argmax(1L).MoveToOuterDisposeScope())

    /// The fraction of labelled images the classifier gets right.
    let accuracy (net: Classifier) (pixels: PixelRange) (batchSize: int) (images: ImageSet) : float =
        let labels =
            match images.Labels with
            | Some l -> l
            | None -> Check.fail "images" images.Source "labelled images"
        use predicted = predict net pixels batchSize images
        let p = predicted.data<int64>().ToArray()
        float (Array.fold2 (fun acc a b -> if a = b then acc + 1 else acc) 0 p labels) / float labels.Length

    /// Penultimate features of every image of a set (clean, t = 0), in batches.
    let imageFeatures (net: Classifier) (pixels: PixelRange) (batchSize: int) (images: ImageSet) : Tensor =
        Check.notNull "images" images
        use _noGrad = torch.no_grad ()
        use t0 = torch.zeros ([| 1L |], dtype = net.Dtype)
        batched images.Count batchSize (fun start count ->
            use scope = torch.NewDisposeScope()
            use first = Tensors.scalar (float start)
            use stop = Tensors.scalar (float (start + count))
            use step = Tensors.scalar 1.0
            let idx = torch.arange (first, stop, step, dtype = torch.int64)
            net.Features(ImageSet.batch pixels net.Dtype idx images, t0).MoveToOuterDisposeScope())
