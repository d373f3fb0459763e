namespace ScoreSde

open System
open TorchSharp

/// Architecture of the score U-Net (see `UNet`).
type UNetConfig =
    {
        /// Image channels (input and output).
        Channels: int
        /// Image height.
        Height: int
        /// Image width.
        Width: int
        /// Channels of the first level; level i has BaseChannels * ChannelMultipliers[i].
        BaseChannels: int
        /// One multiplier per resolution level (the first at full resolution; each further level
        /// halves the resolution, rounding up).
        ChannelMultipliers: int list
        /// Residual blocks per level on the way down (the way up has one more per level).
        BlocksPerLevel: int
        /// Self-attention after the residual blocks of every level whose height is in this list, and
        /// in the middle when the lowest level's height is (e.g. [7] for 28 x 28 images at levels
        /// 28, 14, 7). Empty: no attention.
        AttentionResolutions: int list
        /// Dropout probability in the residual blocks during training (0: none).
        Dropout: float
        /// Groups of every GroupNorm (every level's channel count must be a multiple).
        Groups: int
        /// Width of the Gaussian Fourier time embedding (even).
        FourierFeatures: int
        /// Standard deviation of the embedding's random frequencies (times t in [0, 1]).
        FourierScale: float
        /// Width of the time embedding inside the network (the MLP after the Fourier features).
        TimeChannels: int
        /// Number of classes for class conditioning (0: unconditional). Labels run from 0 to
        /// Classes - 1; label Classes is the null label (no class), for classifier-free guidance.
        Classes: int
    }

/// A score U-Net for images [B, C, H, W] predicting the noise eps(x, t), t in [0, 1] one value per
/// batch element (or one for all), in the style of DDPM (Ho et al. 2020) and the paper's DDPM++:
///
/// - time: Gaussian Fourier features [sin 2 pi W t, cos 2 pi W t] (W ~ N(0, FourierScale^2), fixed,
///   stored as the buffer "fourier_weights"), then Dense, SiLU, Dense to TimeChannels; for a
///   class-conditional network the row of the learned table "label_embedding" [Classes + 1,
///   TimeChannels] for each label is added (row Classes: the null label);
/// - "conv_in" (3x3) to BaseChannels; the way down ("down"): per level, BlocksPerLevel residual
///   blocks (each with optional attention) and, except at the last level, a stride-2 conv; every
///   output is kept as a skip connection;
/// - the middle: residual block, attention (if the lowest level has it), residual block;
/// - the way up ("up"): per level from the lowest, BlocksPerLevel + 1 residual blocks, each taking
///   the features joined to the latest skip connection, and, except at the first level, a
///   nearest-neighbour resize to the next skip's size and a 3x3 conv;
/// - "norm_out" (GroupNorm), SiLU, "conv_out" (3x3) to Channels.
///
/// Residual blocks and attention add their input and scale by 1/sqrt 2 (DDPM++'s skip rescaling).
/// Parameters are created by this class and drawn from the caller's generator (PyTorch's default
/// bounds: U(+-1/sqrt(fan_in)) for convs and dense layers, N(0, 1) for the label table; GroupNorm
/// scale 1 and shift 0): construction never draws from torch's global generator. The registered
/// names are those of the PyTorch twin in tests/ScoreSde.Tests/fixtures/unet.py, so state dicts
/// move across by name.
type UNet private (config: UNetConfig, generator: torch.Generator option, dtype: torch.ScalarType, device: torch.Device) as this =
    inherit torch.nn.Module<Tensor, Tensor, Tensor>("UNet")

    static let validate (c: UNetConfig) =
        Check.positiveInt "config.Channels" c.Channels
        Check.positiveInt "config.Height" c.Height
        Check.positiveInt "config.Width" c.Width
        Check.positiveInt "config.BaseChannels" c.BaseChannels
        Check.notNull "config.ChannelMultipliers" c.ChannelMultipliers
        if c.ChannelMultipliers.IsEmpty || c.ChannelMultipliers |> List.exists (fun m -> m < 1) then
            Check.fail "config.ChannelMultipliers" c.ChannelMultipliers "a non-empty list of positive integers"
        Check.positiveInt "config.BlocksPerLevel" c.BlocksPerLevel
        Check.notNull "config.AttentionResolutions" c.AttentionResolutions
        if c.AttentionResolutions |> List.exists (fun r -> r < 1) then
            Check.fail "config.AttentionResolutions" c.AttentionResolutions "a list of positive heights"
        Check.finite "config.Dropout" c.Dropout
        if c.Dropout < 0.0 || c.Dropout >= 1.0 then
            Check.fail "config.Dropout" c.Dropout "in [0, 1)"
        Check.positiveInt "config.Groups" c.Groups
        for m in c.ChannelMultipliers do
            if (c.BaseChannels * m) % c.Groups <> 0 then
                Check.fail "config.Groups" c.Groups (sprintf "a divisor of every level's channel count (%d)" (c.BaseChannels * m))
        Check.positiveInt "config.FourierFeatures" c.FourierFeatures
        if c.FourierFeatures % 2 <> 0 then
            Check.fail "config.FourierFeatures" c.FourierFeatures "an even number"
        Check.positive "config.FourierScale" c.FourierScale
        Check.positiveInt "config.TimeChannels" c.TimeChannels
        Check.nonNegativeInt "config.Classes" c.Classes

    do
        validate config
        if not (dtype = torch.float32 || dtype = torch.float64) then
            Check.fail "dtype" dtype "float32 or float64"

    let ctx = { Generator = generator; Dtype = dtype; Device = device }
    let source = DropoutSource()
    let mutable channelsLast = false
    let levels = config.ChannelMultipliers.Length
    let heights = List.scan (fun h _ -> (h + 1) / 2) config.Height (List.tail config.ChannelMultipliers)
    let attends (level: int) = List.contains heights.[level] config.AttentionResolutions
    let block inputs outputs level =
        let res = new ResBlock(ctx, inputs, outputs, config.TimeChannels, config.Groups, config.Dropout, source)
        let attn = if attends level then Some(new Attention(ctx, outputs, config.Groups)) else None
        new LevelBlock(res, attn)

    let fourier = ctx.Normal [| int64 (config.FourierFeatures / 2) |] config.FourierScale
    let time0 = new Dense(ctx, config.FourierFeatures, config.TimeChannels)
    let time1 = new Dense(ctx, config.TimeChannels, config.TimeChannels)
    let labelTable =
        if config.Classes > 0 then
            Some(new Modules.Parameter(ctx.Normal [| int64 config.Classes + 1L; int64 config.TimeChannels |] 1.0, true))
        else
            None
    let convIn = new Conv(ctx, config.Channels, config.BaseChannels, 3, 1)

    // The way down: blocks (whose outputs are skips) and downsamplers, with the skip channel counts.
    let down, skipChannels, bottom =
        let items = ResizeArray<Choice<LevelBlock, Downsample>>()
        let skips = ResizeArray [ config.BaseChannels ]
        let mutable current = config.BaseChannels
        for level in 0 .. levels - 1 do
            let outputs = config.BaseChannels * config.ChannelMultipliers.[level]
            for _ in 1 .. config.BlocksPerLevel do
                items.Add(Choice1Of2(block current outputs level))
                current <- outputs
                skips.Add current
            if level < levels - 1 then
                items.Add(Choice2Of2(new Downsample(ctx, current)))
                skips.Add current
        items.ToArray(), skips, current

    let mid1 = new ResBlock(ctx, bottom, bottom, config.TimeChannels, config.Groups, config.Dropout, source)
    let midAttention = if attends (levels - 1) then Some(new Attention(ctx, bottom, config.Groups)) else None
    let mid2 = new ResBlock(ctx, bottom, bottom, config.TimeChannels, config.Groups, config.Dropout, source)

    // The way up: blocks taking [features, skip] and upsamplers.
    let up =
        let items = ResizeArray<Choice<LevelBlock, Upsample>>()
        let skips = ResizeArray skipChannels
        let mutable current = bottom
        for level in levels - 1 .. -1 .. 0 do
            let outputs = config.BaseChannels * config.ChannelMultipliers.[level]
            for _ in 0 .. config.BlocksPerLevel do
                let skip = skips.[skips.Count - 1]
                skips.RemoveAt(skips.Count - 1)
                items.Add(Choice1Of2(block (current + skip) outputs level))
                current <- outputs
            if level > 0 then
                items.Add(Choice2Of2(new Upsample(ctx, current)))
        items.ToArray()

    let normOut = new GroupNorm(ctx, config.Groups, config.BaseChannels)
    let convOut = new Conv(ctx, config.BaseChannels, config.Channels, 3, 1)

    do
        let asModule (c: Choice<LevelBlock, 'S>) : torch.nn.Module =
            match c with
            | Choice1Of2 b -> b
            | Choice2Of2 s -> box s :?> torch.nn.Module
        this.register_buffer ("fourier_weights", fourier, true)
        this.register_module ("time_dense0", time0)
        this.register_module ("time_dense1", time1)
        labelTable |> Option.iter (fun p -> this.register_parameter ("label_embedding", p))
        this.register_module ("conv_in", convIn)
        this.register_module ("down", new Modules.ModuleList<torch.nn.Module>(down |> Array.map asModule))
        this.register_module ("mid_res1", mid1)
        midAttention |> Option.iter (fun a -> this.register_module ("mid_attn", a))
        this.register_module ("mid_res2", mid2)
        this.register_module ("up", new Modules.ModuleList<torch.nn.Module>(up |> Array.map asModule))
        this.register_module ("norm_out", normOut)
        this.register_module ("conv_out", convOut)

    /// A network with parameters drawn from `generator` (its state advances).
    new(config: UNetConfig, generator: torch.Generator, ?dtype: torch.ScalarType, ?device: torch.Device) =
        Native.ensureLoaded ()
        Check.notNull "generator" generator
        new UNet(config, Some generator, defaultArg dtype torch.float32, defaultArg device torch.CPU)

    /// A network with every parameter zero (GroupNorm's scale 1), to be filled by loading or copying.
    static member Empty(config: UNetConfig, ?dtype: torch.ScalarType, ?device: torch.Device) =
        Native.ensureLoaded ()
        new UNet(config, None, defaultArg dtype torch.float32, defaultArg device torch.CPU)

    /// The architecture.
    member _.Config = config

    /// The parameters' dtype.
    member _.Dtype = dtype

    /// The parameters' device.
    member _.Device = device

    /// The height of each level's feature maps (the first is the image height).
    member _.LevelHeights = heights

    /// Number of scalar parameters (trainable; the Fourier frequencies are a fixed buffer).
    member _.ParameterCount = this.parameters () |> Seq.sumBy (fun p -> p.numel ())

    /// Whether the features are laid out channels-last inside the network (the input and output are
    /// ordinary [B, C, H, W] tensors either way; results agree to float rounding).
    member _.ChannelsLast
        with get () = channelsLast
        and set (v: bool) = channelsLast <- v

    /// Where dropout masks come from while training (required when Dropout > 0); the network keeps
    /// a reference and never disposes it.
    member _.DropoutGenerator
        with get () = source.Generator
        and set (g: torch.Generator) = source.Generator <- g

    /// Copy every parameter and buffer from a network of the same architecture (in place, no gradient).
    member _.CopyFrom(other: UNet) =
        Check.notNull "other" other
        if other.Config <> config then
            Check.fail "other" other.Config (sprintf "a network with the same architecture %A" config)
        use _noGrad = torch.no_grad ()
        for mine, theirs in Seq.zip (this.state_dict ()) (other.state_dict ()) do
            mine.Value.copy_ (theirs.Value) |> ignore

    /// eps(x, t) for x [B, Channels, Height, Width], t [B] (or one time for the whole batch) and, for
    /// a class-conditional network, labels: an int64 tensor [B] (or one label for all) of values in
    /// 0 .. Classes, Classes being the null label; null labels the whole batch with the null label.
    /// An unconditional network takes null. The output has x's shape and dtype.
    member _.Forward(x: Tensor, t: Tensor, labels: Tensor) : Tensor =
        ImageNet.checkImages x config.Channels config.Height config.Width
        let batch = x.size 0
        use scope = torch.NewDisposeScope()
        let features = ImageNet.fourier fourier dtype t batch
        let temb = time1.forward (torch.nn.functional.silu (time0.forward features))
        let temb =
            match labelTable with
            | None when not (isNull labels) -> Check.fail "labels" labels.shape "null for an unconditional network (Classes = 0)"
            | None -> temb
            | Some table ->
                let ids =
                    if isNull labels then
                        use nullLabel = Scalar.op_Implicit (int64 config.Classes)
                        torch.full ([| batch |], nullLabel, dtype = torch.int64, device = device)
                    else
                        if labels.dtype <> torch.int64 || (labels.numel () <> 1L && labels.numel () <> batch) then
                            Check.fail "labels" labels.shape (sprintf "an int64 tensor of one label or one per batch element (%d)" batch)
                        let lo, hi = labels.min().item<int64>(), labels.max().item<int64>()
                        if lo < 0L || hi > int64 config.Classes then
                            Check.fail "labels" (lo, hi) (sprintf "labels in 0 .. %d (%d: the null label)" config.Classes config.Classes)
                        let l = labels.reshape([| -1L |]).``to``(device)
                        if l.size 0 = 1L && batch <> 1L then l.expand ([| batch |]) else l
                Tensors.add temb (table.index_select (0L, ids))
        let act = torch.nn.functional.silu temb
        let mutable h = convIn.forward (x.to_type dtype)
        if channelsLast then
            h <- Layout.channelsLast h
        let skips = Collections.Generic.Stack<Tensor>()
        skips.Push h
        for item in down do
            h <-
                match item with
                | Choice1Of2 b -> b.forward (h, act)
                | Choice2Of2 d -> d.forward h
            skips.Push h
        h <- mid1.forward (h, act)
        midAttention |> Option.iter (fun a -> h <- a.forward h)
        h <- mid2.forward (h, act)
        for item in up do
            h <-
                match item with
                | Choice1Of2 b -> b.forward (torch.cat ([| h; skips.Pop() |], 1L), act)
                | Choice2Of2 u ->
                    let next = skips.Peek()
                    u.Forward(h, next.size 2, next.size 3)
        let out = convOut.forward (torch.nn.functional.silu (normOut.forward h, not (torch.is_grad_enabled ())))
        out.to_type(x.dtype).contiguous().MoveToOuterDisposeScope()

    /// eps(x, t) with the null label for a class-conditional network.
    override u.forward(x: Tensor, t: Tensor) : Tensor = u.Forward(x, t, null)

[<RequireQualifiedAccess>]
module UNet =
    /// A U-Net for Channels x Height x Width images: 32 base channels, levels x1, x2, x2, two blocks
    /// per level, attention at the lowest level, 8 groups, 32 Fourier features of scale 16, a 128-wide
    /// time embedding, unconditional, no dropout.
    let defaultConfig (channels: int) (height: int) (width: int) =
        let lowest = List.fold (fun h _ -> (h + 1) / 2) height [ 2; 2 ]
        { Channels = channels
          Height = height
          Width = width
          BaseChannels = 32
          ChannelMultipliers = [ 1; 2; 2 ]
          BlocksPerLevel = 2
          AttentionResolutions = [ lowest ]
          Dropout = 0.0
          Groups = 8
          FourierFeatures = 32
          FourierScale = 16.0
          TimeChannels = 128
          Classes = 0 }

    /// The null label of a class-conditional architecture (Classes).
    let nullLabel (config: UNetConfig) = config.Classes

    /// The network as a noise-prediction `Model` (class-conditional networks see the null label).
    let toModel (net: UNet) : Model =
        Check.notNull "net" net
        Model.noise (fun x t -> net.Forward(x, t, null))

    /// A class-conditional network as a `Model` for one batch of labels: an int64 tensor [B] (or one
    /// label for every sample), closed over; the samplers call it with (x, t) as any model. The
    /// labels stay the caller's (not copied, not disposed).
    let conditionalModel (net: UNet) (labels: Tensor) : Model =
        Check.notNull "net" net
        Check.notNull "labels" labels
        if net.Config.Classes = 0 then
            Check.fail "net" net.Config.Classes "a class-conditional network (Classes > 0)"
        Model.noise (fun x t -> net.Forward(x, t, labels))

    /// A fresh network with the same architecture, parameters, buffers and mode (training or eval).
    let copy (net: UNet) : UNet =
        Check.notNull "net" net
        let c = UNet.Empty(net.Config, net.Dtype, net.Device)
        c.CopyFrom net
        c.train (net.training)
        c

    /// Copy named tensors into the network's parameters and buffers (in place, converted to the
    /// network's dtype and device): a state dict, or the named parameters and buffers of a
    /// TorchScript module exported from the PyTorch twin. The names must be exactly the network's
    /// (`source` names the origin in errors); shapes must match. Nothing is copied unless all match.
    let loadNamed (source: string) (net: UNet) (tensors: (string * Tensor) seq) =
        Check.notNull "net" net
        Check.notNull "tensors" tensors
        let given = tensors |> Seq.toArray
        let mine = net.state_dict ()
        let names = given |> Array.map fst |> Set.ofArray
        let missing = mine.Keys |> Seq.filter (fun k -> not (names.Contains k)) |> Seq.toList
        let unexpected = given |> Array.map fst |> Array.filter (fun k -> not (mine.ContainsKey k)) |> Array.toList
        if not missing.IsEmpty || not unexpected.IsEmpty then
            let show (l: string list) =
                if l.IsEmpty then
                    "none"
                else
                    String.Join(", ", List.truncate 5 l) + (if l.Length > 5 then ", ..." else "")
            raise (
                ArgumentException(
                    sprintf "%s does not hold this U-Net's tensors: missing %s; unexpected %s." source (show missing) (show unexpected),
                    "tensors"
                )
            )
        for name, t in given do
            if t.shape <> mine.[name].shape then
                raise (
                    ArgumentException(
                        sprintf "%s: '%s' has shape %A, this U-Net's has %A." source name t.shape mine.[name].shape,
                        "tensors"
                    )
                )
        use _noGrad = torch.no_grad ()
        for name, t in given do
            mine.[name].copy_(t) |> ignore

    /// A U-Net of architecture `config` holding the weights of a TorchScript file exported from the
    /// PyTorch twin (python/scoresde_unet.py, torch.jit.script then save): its named parameters and
    /// buffers are copied by name. In eval mode.
    let ofTorchScript (path: string) (config: UNetConfig) (dtype: torch.ScalarType) : UNet =
        Native.ensureLoaded ()
        FileError.requireFile path
        let net = UNet.Empty(config, dtype)
        try
            use m =
                try
                    torch.jit.load (path)
                with
                | :? Runtime.InteropServices.ExternalException
                | :? InvalidOperationException as e ->
                    FileError.fail
                        path
                        (sprintf "not a TorchScript file that TorchSharp can load (%s)" ((e.Message.Split('\n').[0]).Trim()))
            let named =
                Seq.append
                    (m.named_parameters () |> Seq.map (fun struct (n, p) -> n, (p :> Tensor)))
                    (m.named_buffers () |> Seq.map (fun struct (n, b) -> n, b))
            loadNamed path net named
            net.eval ()
            net
        with _ ->
            net.Dispose()
            reraise ()
