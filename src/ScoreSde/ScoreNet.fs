namespace ScoreSde

open System
open TorchSharp
open TorchSharp.Modules

/// Architecture of the MLP score network.
type ScoreNetConfig =
    {
        /// Coordinates per sample (input and output width).
        Dim: int
        /// Width of the hidden layers.
        Hidden: int
        /// Number of hidden layers (each Linear + SiLU).
        Layers: int
        /// Width of the sinusoidal time embedding (even).
        Embedding: int
        /// Highest angular frequency of the time embedding; the lowest is MaxFrequency / 10^4.
        MaxFrequency: float
    }

/// A small time-conditioned MLP that predicts the noise eps(x, t) of [B, Dim] inputs, t in [0, 1]
/// one value per batch element (or one for all): the input [x, sin(w_k t), cos(w_k t)] goes through
/// `Layers` Linear + SiLU layers of width `Hidden` and a final Linear layer.
///
/// Parameters are created by this class and initialised from the caller's generator (uniform in
/// +-1/sqrt(fan_in), PyTorch's default bound for Linear layers): construction never draws from
/// torch's global generator, so a seed reproduces the network exactly.
type ScoreNet private (config: ScoreNetConfig, generator: torch.Generator option, dtype: torch.ScalarType, device: torch.Device) as this =
    inherit torch.nn.Module<Tensor, Tensor, Tensor>("ScoreNet")

    static let validate (config: ScoreNetConfig) =
        Check.positiveInt "config.Dim" config.Dim
        Check.positiveInt "config.Hidden" config.Hidden
        Check.positiveInt "config.Layers" config.Layers
        Check.positiveInt "config.Embedding" config.Embedding
        if config.Embedding % 2 <> 0 then
            Check.fail "config.Embedding" config.Embedding "an even number"
        Check.positive "config.MaxFrequency" config.MaxFrequency

    let widths =
        [| yield config.Dim + config.Embedding
           for _ in 1 .. config.Layers do
               yield config.Hidden
           yield config.Dim |]

    let weights = ResizeArray<Parameter>()
    let biases = ResizeArray<Parameter>()

    do
        validate config
        if not (dtype = torch.float32 || dtype = torch.float64) then
            Check.fail "dtype" dtype "float32 or float64"
        use _noGrad = torch.no_grad ()
        for l in 0 .. widths.Length - 2 do
            let fanIn, fanOut = int64 widths.[l], int64 widths.[l + 1]
            let w = torch.zeros ([| fanOut; fanIn |], dtype = dtype, device = device)
            let b = torch.zeros ([| fanOut |], dtype = dtype, device = device)
            match generator with
            | Some g ->
                let bound = 1.0 / Math.Sqrt(float fanIn)
                // draw on the generator's device, then copy (a CPU generator can initialise a GPU net)
                use wd = torch.empty ([| fanOut; fanIn |], dtype = dtype, device = g.device)
                use bd = torch.empty ([| fanOut |], dtype = dtype, device = g.device)
                w.copy_ (wd.uniform_ (-bound, bound, g)) |> ignore
                b.copy_ (bd.uniform_ (-bound, bound, g)) |> ignore
            | None -> ()
            let wp = new Parameter(w, true)
            let bp = new Parameter(b, true)
            this.register_parameter (sprintf "weight%d" l, wp)
            this.register_parameter (sprintf "bias%d" l, bp)
            weights.Add wp
            biases.Add bp
        let half = config.Embedding / 2
        let freqs =
            Array.init half (fun k ->
                let f = if half = 1 then 0.0 else float k / float (half - 1)
                config.MaxFrequency * Math.Pow(1e-4, f))
        this.register_buffer ("frequencies", torch.tensor (freqs, dtype = dtype, device = device), false)

    /// A network with parameters initialised from `generator` (its state advances).
    new(config: ScoreNetConfig, generator: torch.Generator, ?dtype: torch.ScalarType, ?device: torch.Device) =
        Native.ensureLoaded ()
        Check.liveGenerator "generator" generator
        new ScoreNet(config, Some generator, defaultArg dtype torch.float32, defaultArg device torch.CPU)

    /// A network with all parameters zero, to be filled by `load` or `copyFrom`.
    static member Empty(config: ScoreNetConfig, ?dtype: torch.ScalarType, ?device: torch.Device) =
        Native.ensureLoaded ()
        new ScoreNet(config, None, defaultArg dtype torch.float32, defaultArg device torch.CPU)

    /// The architecture.
    member _.Config = config

    /// The parameters' dtype.
    member _.Dtype = dtype

    /// The parameters' device.
    member _.Device = device

    /// Number of scalar parameters.
    member _.ParameterCount = Seq.append weights biases |> Seq.sumBy (fun p -> p.numel ())

    /// Copy every parameter value from a network of the same architecture (in place, no gradient).
    member _.CopyFrom(other: ScoreNet) =
        Check.notNull "other" other
        if other.Config <> config then
            Check.fail "other" other.Config (sprintf "a network with the same architecture %A" config)
        use _noGrad = torch.no_grad ()
        for mine, theirs in Seq.zip (this.parameters ()) (other.parameters ()) do
            mine.copy_ (theirs) |> ignore

    /// The sinusoidal time embedding [B, Embedding] of times t ([B] or 0-d, broadcast to B rows).
    member _.Embed(t: Tensor, batch: int64) : Tensor =
        use scope = torch.NewDisposeScope()
        let freqs = this.get_buffer ("frequencies")
        let tt = t.to_type(dtype).reshape([| -1L; 1L |])
        let tt = if tt.shape.[0] = 1L && batch <> 1L then tt.expand ([| batch; 1L |]) else tt
        let angles = tt * freqs.reshape ([| 1L; -1L |])
        torch.cat([| angles.sin (); angles.cos () |], 1L).MoveToOuterDisposeScope()

    /// eps(x, t) for x [B, Dim] and t [B] (or one time for the whole batch).
    override _.forward(x: Tensor, t: Tensor) : Tensor =
        if x.dim () <> 2L || x.shape.[1] <> int64 config.Dim then
            Check.fail "x" x.shape (sprintf "a [B, %d] tensor" config.Dim)
        if t.numel () <> 1L && t.numel () <> x.shape.[0] then
            Check.fail "t" t.shape (sprintf "one time or one per batch element (%d)" x.shape.[0])
        use scope = torch.NewDisposeScope()
        let mutable h = torch.cat ([| x.to_type (dtype); this.Embed(t, x.shape.[0]) |], 1L)
        let last = weights.Count - 1
        for l in 0..last do
            h <- torch.nn.functional.linear (h, weights.[l], biases.[l])
            if l < last then
                h <- torch.nn.functional.silu (h)
        h.to_type(x.dtype).MoveToOuterDisposeScope()

[<RequireQualifiedAccess>]
module ScoreNet =
    /// The default architecture for 2-D data: 3 hidden layers of 128, a 32-wide embedding.
    let defaultConfig (dim: int) = { Dim = dim; Hidden = 128; Layers = 3; Embedding = 32; MaxFrequency = 1000.0 }

    /// The network as a noise-prediction `Model` (the samplers' model type).
    let toModel (net: ScoreNet) : Model =
        Check.notNull "net" net
        Model.noise (fun x t -> net.forward (x, t))

    /// A fresh network with the same architecture and parameter values.
    let copy (net: ScoreNet) : ScoreNet =
        Check.notNull "net" net
        let c = ScoreNet.Empty(net.Config, net.Dtype, net.Device)
        c.CopyFrom net
        c
