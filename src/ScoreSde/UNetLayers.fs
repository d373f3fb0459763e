namespace ScoreSde

open System
open TorchSharp
open TorchSharp.Modules

/// Where a network's parameters live and where their first values come from: a caller's generator
/// (drawn on its device, then copied), or nothing (zeros, for networks filled by loading).
/// TorchSharp's own layers initialise themselves from torch's global generator, so the networks
/// here build theirs from plain parameters.
type internal LayerContext =
    { Generator: torch.Generator option
      Dtype: torch.ScalarType
      Device: torch.Device }

    member private c.Draw (shape: int64[]) (fill: Tensor -> torch.Generator -> Tensor) : Tensor =
        let p = torch.zeros (shape, dtype = c.Dtype, device = c.Device)
        match c.Generator with
        | Some g ->
            use _noGrad = torch.no_grad ()
            use d = torch.empty (shape, dtype = c.Dtype, device = g.device)
            use filled = fill d g
            p.copy_ (filled) |> ignore
        | None -> ()
        p

    /// A trainable parameter drawn from U(-bound, bound) (PyTorch's default bound 1/sqrt(fan_in)).
    member c.Uniform (shape: int64[]) (bound: float) : Parameter =
        new Parameter(c.Draw shape (fun d g -> d.uniform_ (-bound, bound, g)), true)

    /// A tensor drawn from N(0, std^2).
    member c.Normal (shape: int64[]) (std: float) : Tensor =
        c.Draw shape (fun d g ->
            use s = Tensors.scalar std
            d.normal_(0.0, 1.0, g).mul_(s))

    /// A trainable parameter filled with a constant (not drawn: GroupNorm's scale and shift).
    member c.Constant (shape: int64[]) (value: float) : Parameter =
        use s = Tensors.scalar value
        new Parameter(torch.full (shape, s, dtype = c.Dtype, device = c.Device), true)

/// A 2-D convolution with a square kernel, padding kernel / 2 (same size at stride 1), and bias.
/// Parameters "weight" [out, in, k, k] and "bias" [out], drawn from U(+-1/sqrt(in k^2)).
type internal Conv(ctx: LayerContext, inputs: int, outputs: int, kernel: int, stride: int) as this =
    inherit torch.nn.Module<Tensor, Tensor>("Conv")
    let bound = 1.0 / Math.Sqrt(float (inputs * kernel * kernel))
    let weight = ctx.Uniform [| int64 outputs; int64 inputs; int64 kernel; int64 kernel |] bound
    let bias = ctx.Uniform [| int64 outputs |] bound
    let strides = [| int64 stride; int64 stride |]
    let padding = [| int64 (kernel / 2); int64 (kernel / 2) |]

    do
        this.register_parameter ("weight", weight)
        this.register_parameter ("bias", bias)

    override _.forward(x: Tensor) = torch.nn.functional.conv2d (x, weight, bias, strides, padding)

/// A linear layer: "weight" [out, in] and "bias" [out], drawn from U(+-1/sqrt(in)).
type internal Dense(ctx: LayerContext, inputs: int, outputs: int) as this =
    inherit torch.nn.Module<Tensor, Tensor>("Dense")
    let bound = 1.0 / Math.Sqrt(float inputs)
    let weight = ctx.Uniform [| int64 outputs; int64 inputs |] bound
    let bias = ctx.Uniform [| int64 outputs |] bound

    do
        this.register_parameter ("weight", weight)
        this.register_parameter ("bias", bias)

    override _.forward(x: Tensor) = torch.nn.functional.linear (x, weight, bias)

/// Group normalisation (Wu and He 2018) with eps 1e-6: "weight" (ones) and "bias" (zeros) per channel.
type internal GroupNorm(ctx: LayerContext, groups: int, channels: int) as this =
    inherit torch.nn.Module<Tensor, Tensor>("GroupNorm")
    let weight = ctx.Constant [| int64 channels |] 1.0
    let bias = ctx.Constant [| int64 channels |] 0.0

    do
        this.register_parameter ("weight", weight)
        this.register_parameter ("bias", bias)

    override _.forward(x: Tensor) = torch.nn.functional.group_norm (x, int64 groups, weight, bias, 1e-6)

/// Memory layouts of image tensors [B, C, H, W].
module internal Layout =
    /// Whether x is laid out channels-last (NHWC in memory: the channel stride is 1).
    let isChannelsLast (x: Tensor) = x.dim () = 4L && x.size 1 > 1L && x.stride 1 = 1L

    /// The same values laid out channels-last (NHWC in memory, still indexed [B, C, H, W]): a copy,
    /// differentiable. libtorch's convolutions (oneDNN) run faster on this layout, and GroupNorm,
    /// SiLU, sums, concatenation and resizing keep it.
    let channelsLast (x: Tensor) : Tensor =
        use scope = torch.NewDisposeScope()
        x.permute(0L, 2L, 3L, 1L).contiguous().permute(0L, 3L, 1L, 2L).MoveToOuterDisposeScope()

/// Shared pieces of the image networks' forward passes.
module internal ImageNet =
    /// Fail unless x is a [B, channels, height, width] tensor.
    let checkImages (x: Tensor) (channels: int) (height: int) (width: int) =
        Check.notNull "x" x
        if x.dim () <> 4L || x.size 1 <> int64 channels || x.size 2 <> int64 height || x.size 3 <> int64 width then
            Check.fail "x" x.shape (sprintf "a [B, %d, %d, %d] tensor" channels height width)

    /// Gaussian Fourier features [B, 2 F] of times t ([B] or one value, broadcast to B rows) for
    /// frequencies w [F]: [sin 2 pi w t, cos 2 pi w t], in dtype.
    let fourier (w: Tensor) (dtype: torch.ScalarType) (t: Tensor) (batch: int64) : Tensor =
        if isNull t || (t.numel () <> 1L && t.numel () <> batch) then
            Check.fail "t" (if isNull t then "null" else sprintf "%A" t.shape) (sprintf "one time or one per batch element (%d)" batch)
        use scope = torch.NewDisposeScope()
        use twoPi = Tensors.scalar (2.0 * Math.PI)
        let tt = t.to_type(dtype).reshape([| -1L; 1L |])
        let tt = if tt.size 0 = 1L && batch <> 1L then tt.expand ([| batch; 1L |]) else tt
        let angles = tt.mul(w.reshape ([| 1L; -1L |])).mul_(twoPi)
        torch.cat([| angles.sin (); angles.cos () |], 1L).MoveToOuterDisposeScope()

/// Where dropout masks come from: a generator the owner of the network sets (dropout draws nothing
/// from torch's global generator).
type internal DropoutSource() =
    member val Generator: torch.Generator = null with get, set

/// A residual block (Ho et al. 2020; Song et al. 2021's DDPM++): GroupNorm, SiLU, 3x3 conv; plus a
/// dense projection of the activated time embedding, per channel; GroupNorm, SiLU, dropout, 3x3
/// conv; added to the input (through a 1x1 conv "skip" when the channel count changes) and scaled
/// by 1/sqrt 2.
type internal ResBlock(ctx: LayerContext, inputs: int, outputs: int, timeChannels: int, groups: int, dropout: float, source: DropoutSource) as this
    =
    inherit torch.nn.Module<Tensor, Tensor, Tensor>("ResBlock")
    let norm1 = new GroupNorm(ctx, groups, inputs)
    let conv1 = new Conv(ctx, inputs, outputs, 3, 1)
    let temb = new Dense(ctx, timeChannels, outputs)
    let norm2 = new GroupNorm(ctx, groups, outputs)
    let conv2 = new Conv(ctx, outputs, outputs, 3, 1)
    let skip = if inputs <> outputs then Some(new Conv(ctx, inputs, outputs, 1, 1)) else None

    do
        this.register_module ("norm1", norm1)
        this.register_module ("conv1", conv1)
        this.register_module ("temb", temb)
        this.register_module ("norm2", norm2)
        this.register_module ("conv2", conv2)
        skip |> Option.iter (fun s -> this.register_module ("skip", s))

    /// Inverted dropout with a mask drawn from the source's generator (training mode only).
    member private _.Dropout(h: Tensor) : Tensor =
        if dropout = 0.0 || not this.training then
            h
        else
            let g = source.Generator
            if isNull g then
                raise (
                    InvalidOperationException(
                        sprintf
                            "Dropout is %g: set the network's DropoutGenerator before training (dropout draws only from a caller's generator)."
                            dropout
                    )
                )
            use u = torch.rand (h.shape, dtype = h.dtype, device = g.device, generator = g)
            use ud = u.``to`` (h.device)
            use p = Tensors.scalar dropout
            use keep = ud.ge (p)
            use mask = keep.to_type (h.dtype)
            use scale = Tensors.scalar (1.0 / (1.0 - dropout))
            use scaled = mask.mul_ (scale)
            h.mul (scaled)

    /// The block applied to x [B, inputs, H, W] with the activated time embedding [B, timeChannels].
    /// The sums and scalings are in place on fresh tensors (autograd needs no convolution's output);
    /// with gradients off the activations are in place too.
    override _.forward(x: Tensor, tembActivated: Tensor) : Tensor =
        use scope = torch.NewDisposeScope()
        let inplace = not (torch.is_grad_enabled ())
        let act (t: Tensor) = torch.nn.functional.silu (t, inplace)
        let h = conv1.forward (act (norm1.forward x))
        Tensors.addInPlace h (temb.forward(tembActivated).unsqueeze(-1L).unsqueeze(-1L)) |> ignore
        let h = conv2.forward (this.Dropout(act (norm2.forward h)))
        match skip with
        | Some c -> Tensors.addInPlace h (c.forward x) |> ignore
        | None -> Tensors.addInPlace h x |> ignore
        use r = Tensors.scalar (1.0 / Math.Sqrt 2.0)
        h.mul_(r).MoveToOuterDisposeScope()

/// Single-head self-attention over the pixels (Ho et al. 2020's AttnBlock): GroupNorm, a 1x1 conv
/// "qkv" to queries, keys and values, softmax(q^T k / sqrt C) weights, a 1x1 conv "proj", added to
/// the input and scaled by 1/sqrt 2.
type internal Attention(ctx: LayerContext, channels: int, groups: int) as this =
    inherit torch.nn.Module<Tensor, Tensor>("Attention")
    let norm = new GroupNorm(ctx, groups, channels)
    let qkv = new Conv(ctx, channels, 3 * channels, 1, 1)
    let proj = new Conv(ctx, channels, channels, 1, 1)

    do
        this.register_module ("norm", norm)
        this.register_module ("qkv", qkv)
        this.register_module ("proj", proj)

    override _.forward(x: Tensor) : Tensor =
        use scope = torch.NewDisposeScope()
        let b, c, h, w = x.size 0, x.size 1, x.size 2, x.size 3
        let all = qkv.forward(norm.forward x).reshape([| b; 3L; c; h * w |])
        let q, k, v = all.select (1L, 0L), all.select (1L, 1L), all.select (1L, 2L)
        use s = Tensors.scalar (1.0 / Math.Sqrt(float c))
        let weights = torch.bmm(q.transpose (1L, 2L), k).mul_(s).softmax(-1L)
        let attended = torch.bmm (v, weights.transpose (1L, 2L))
        let attended = attended.reshape ([| b; c; h; w |])
        let out = proj.forward (if Layout.isChannelsLast x then Layout.channelsLast attended else attended)
        use r = Tensors.scalar (1.0 / Math.Sqrt 2.0)
        (Tensors.addInPlace out x).mul_(r).MoveToOuterDisposeScope()

/// One step of a U-Net level: a residual block, then optional attention (on the way down its output
/// is kept as a skip connection; on the way up its input is the skip joined to the features).
type internal LevelBlock(res: ResBlock, attention: Attention option) as this =
    inherit torch.nn.Module<Tensor, Tensor, Tensor>("LevelBlock")

    do
        this.register_module ("res", res)
        attention |> Option.iter (fun a -> this.register_module ("attn", a))

    override _.forward(x: Tensor, tembActivated: Tensor) : Tensor =
        match attention with
        | None -> res.forward (x, tembActivated)
        | Some a ->
            use h = res.forward (x, tembActivated)
            a.forward h

/// Halving the resolution: a 3x3 conv with stride 2 (sizes n -> ceil(n / 2)).
type internal Downsample(ctx: LayerContext, channels: int) as this =
    inherit torch.nn.Module<Tensor, Tensor>("Downsample")
    let conv = new Conv(ctx, channels, channels, 3, 2)
    do this.register_module ("conv", conv)
    override _.forward(x: Tensor) = conv.forward x

/// Doubling the resolution: nearest-neighbour resizing to the size of the skip connection it will
/// meet (so odd sizes such as 7 -> 4 -> 7 round-trip), then a 3x3 conv.
type internal Upsample(ctx: LayerContext, channels: int) as this =
    inherit torch.nn.Module<Tensor, Tensor>("Upsample")
    let conv = new Conv(ctx, channels, channels, 3, 1)
    do this.register_module ("conv", conv)

    /// Resize x to height x width, then convolve.
    member _.Forward(x: Tensor, height: int64, width: int64) : Tensor =
        use resized = torch.nn.functional.interpolate (x, [| height; width |], mode = torch.InterpolationMode.Nearest)
        conv.forward resized

    override u.forward(x: Tensor) = u.Forward(x, 2L * x.size 2, 2L * x.size 3)
