namespace ScoreSde

open System
open TorchSharp

/// Architecture of the image classifier (see `Classifier`).
type ClassifierConfig =
    {
        /// Image channels.
        Channels: int
        /// Image height.
        Height: int
        /// Image width.
        Width: int
        /// Channels of each stage; every stage after the first works at half the resolution.
        Widths: int list
        /// Width of the penultimate layer (the features) and of the time embedding.
        Features: int
        /// Number of classes.
        Classes: int
        /// Groups of every GroupNorm (every stage width must be a multiple).
        Groups: int
        /// Whether the classifier also takes a time t in [0, 1] (for classifying noisy x_t, as
        /// classifier guidance needs); false: t is ignored and may be null.
        TimeConditional: bool
        /// Width of the Gaussian Fourier time embedding (even; used when TimeConditional).
        FourierFeatures: int
        /// Standard deviation of the Fourier frequencies (used when TimeConditional).
        FourierScale: float
    }

/// One stage of the classifier: conv, GroupNorm, SiLU, (+ time projection), conv, GroupNorm, SiLU.
type internal ClassifierStage(ctx: LayerContext, inputs: int, width: int, groups: int, timeChannels: int option) as this =
    inherit torch.nn.Module<Tensor, Tensor, Tensor>("ClassifierStage")
    let conv1 = new Conv(ctx, inputs, width, 3, 1)
    let norm1 = new GroupNorm(ctx, groups, width)
    let temb = timeChannels |> Option.map (fun c -> new Dense(ctx, c, width))
    let conv2 = new Conv(ctx, width, width, 3, 1)
    let norm2 = new GroupNorm(ctx, groups, width)

    do
        this.register_module ("conv1", conv1)
        this.register_module ("norm1", norm1)
        temb |> Option.iter (fun d -> this.register_module ("temb", d))
        this.register_module ("conv2", conv2)
        this.register_module ("norm2", norm2)

    /// The stage on h with the activated time embedding (null when not time-conditional).
    override _.forward(h: Tensor, tembActivated: Tensor) : Tensor =
        use scope = torch.NewDisposeScope()
        let a = torch.nn.functional.silu (norm1.forward (conv1.forward h))
        let a =
            match temb with
            | Some d -> Tensors.add a (d.forward(tembActivated).unsqueeze(-1L).unsqueeze(-1L))
            | None -> a
        torch.nn.functional.silu(norm2.forward (conv2.forward a)).MoveToOuterDisposeScope()

/// A small CNN classifier for images [B, C, H, W], for measuring samples without downloaded weights
/// (its penultimate features give a Frechet distance) and, with a time input, for classifier
/// guidance. Stage i ("stages.i"): 3x3 conv ("conv1", to Widths[i]), GroupNorm ("norm1"), SiLU, plus,
/// when time-conditional, a dense projection ("temb") of the activated time embedding per channel;
/// 3x3 conv ("conv2"), GroupNorm ("norm2"), SiLU; then 2x2 average pooling before the next stage
/// (rounding up). After the last stage: the mean over pixels, Dense ("features") and SiLU (the
/// penultimate features), Dense ("logits") to Classes. The time embedding (time-conditional only):
/// Fourier features of t (buffer "fourier_weights"), Dense ("time_dense") to Features.
/// Parameters are drawn from the caller's generator (PyTorch's default bounds), never from torch's
/// global generator.
type Classifier private (config: ClassifierConfig, generator: torch.Generator option, dtype: torch.ScalarType, device: torch.Device) as this
    =
    inherit torch.nn.Module<Tensor, Tensor, Tensor>("Classifier")

    static let validate (c: ClassifierConfig) =
        Check.positiveInt "config.Channels" c.Channels
        Check.positiveInt "config.Height" c.Height
        Check.positiveInt "config.Width" c.Width
        Check.notNull "config.Widths" c.Widths
        if c.Widths.IsEmpty || c.Widths |> List.exists (fun w -> w < 1) then
            Check.fail "config.Widths" c.Widths "a non-empty list of positive integers"
        Check.positiveInt "config.Features" c.Features
        if c.Classes < 2 then
            Check.fail "config.Classes" c.Classes "at least 2"
        Check.positiveInt "config.Groups" c.Groups
        for w in c.Widths do
            if w % c.Groups <> 0 then
                Check.fail "config.Groups" c.Groups (sprintf "a divisor of every stage width (%d)" w)
        if c.TimeConditional then
            Check.positiveInt "config.FourierFeatures" c.FourierFeatures
            if c.FourierFeatures % 2 <> 0 then
                Check.fail "config.FourierFeatures" c.FourierFeatures "an even number"
            Check.positive "config.FourierScale" c.FourierScale

    do
        validate config
        if not (dtype = torch.float32 || dtype = torch.float64) then
            Check.fail "dtype" dtype "float32 or float64"

    let ctx = { Generator = generator; Dtype = dtype; Device = device }

    let stages =
        config.Widths
        |> List.mapi (fun i w ->
            let inputs = if i = 0 then config.Channels else config.Widths.[i - 1]
            let time = if config.TimeConditional then Some config.Features else None
            new ClassifierStage(ctx, inputs, w, config.Groups, time))
        |> List.toArray

    let fourier =
        if config.TimeConditional then
            Some(ctx.Normal [| int64 (config.FourierFeatures / 2) |] config.FourierScale)
        else
            None
    let timeDense =
        if config.TimeConditional then
            Some(new Dense(ctx, config.FourierFeatures, config.Features))
        else
            None
    let features = new Dense(ctx, List.last config.Widths, config.Features)
    let logits = new Dense(ctx, config.Features, config.Classes)

    do
        this.register_module ("stages", new Modules.ModuleList<ClassifierStage>(stages))
        fourier |> Option.iter (fun w -> this.register_buffer ("fourier_weights", w, true))
        timeDense |> Option.iter (fun d -> this.register_module ("time_dense", d))
        this.register_module ("features", features)
        this.register_module ("logits", logits)

    /// A classifier with parameters drawn from `generator` (its state advances).
    new(config: ClassifierConfig, generator: torch.Generator, ?dtype: torch.ScalarType, ?device: torch.Device) =
        Native.ensureLoaded ()
        Check.notNull "generator" generator
        new Classifier(config, Some generator, defaultArg dtype torch.float32, defaultArg device torch.CPU)

    /// A classifier with zero parameters (GroupNorm scale 1), to be filled by loading.
    static member Empty(config: ClassifierConfig, ?dtype: torch.ScalarType, ?device: torch.Device) =
        Native.ensureLoaded ()
        new Classifier(config, None, defaultArg dtype torch.float32, defaultArg device torch.CPU)

    /// The architecture.
    member _.Config = config

    /// The parameters' dtype.
    member _.Dtype = dtype

    /// Number of scalar parameters.
    member _.ParameterCount = this.parameters () |> Seq.sumBy (fun p -> p.numel ())

    /// The penultimate features [B, Features] and the logits [B, Classes] of images x [B, C, H, W] at
    /// times t ([B] or one value; ignored, and may be null, unless TimeConditional).
    member _.Run(x: Tensor, t: Tensor) : Tensor * Tensor =
        ImageNet.checkImages x config.Channels config.Height config.Width
        let batch = x.size 0
        use scope = torch.NewDisposeScope()
        let tact =
            match fourier, timeDense with
            | Some w, Some dense -> Some(torch.nn.functional.silu (dense.forward (ImageNet.fourier w dtype t batch)))
            | _ -> None
        let tact = defaultArg tact null
        let mutable h = x.to_type dtype
        for i, stage in Array.indexed stages do
            if i > 0 then
                h <- torch.nn.functional.avg_pool2d (h, [| 2L; 2L |], ceil_mode = true)
            h <- stage.forward (h, tact)
        let f = torch.nn.functional.silu (features.forward (h.mean ([| 2L; 3L |])))
        let l = logits.forward f
        f.MoveToOuterDisposeScope(), l.MoveToOuterDisposeScope()

    /// The logits [B, Classes] of x at times t (t ignored unless TimeConditional).
    member c.Logits(x: Tensor, t: Tensor) : Tensor =
        let f, l = c.Run(x, t)
        f.Dispose()
        l

    /// The penultimate features [B, Features] of x at times t (t ignored unless TimeConditional).
    member c.Features(x: Tensor, t: Tensor) : Tensor =
        let f, l = c.Run(x, t)
        l.Dispose()
        f

    /// The logits of x at times t.
    override c.forward(x: Tensor, t: Tensor) : Tensor = c.Logits(x, t)
