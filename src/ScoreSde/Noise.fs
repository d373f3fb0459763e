namespace ScoreSde

open System
open System.Collections.Generic
open TorchSharp

/// A source of standard normal noise. `Fill` overwrites a tensor in place with N(0, 1) draws.
/// Randomness only ever comes from a generator the caller supplied or a seed the caller chose.
type Noise =
    {
        Fill: Tensor -> unit
        /// Human-readable description (for logs and errors).
        Description: string
    }

[<RequireQualifiedAccess>]
module Noise =
    /// Noise from a caller's generator: one stream for the whole batch. On CPU this is the same
    /// stream as PyTorch's `torch.randn(shape, generator=g)` for the same seed, so seeded loops
    /// reproduce Python numbers. The generator's state advances; it is never reseeded or disposed.
    /// A generator on another device than the tensor (a CPU generator with GPU tensors) draws on its
    /// own device and the draws are copied over, as diffusers' randn_tensor does. A disposed generator
    /// is an ObjectDisposedException (here and at every draw).
    let fromGenerator (generator: torch.Generator) : Noise =
        // A disposed TorchSharp generator has a null handle, and drawing with it silently uses torch's
        // global generator instead: refused here and at every draw.
        Check.liveGenerator "generator" generator
        let gdev = generator.device
        let fill (t: Tensor) =
            Check.liveGenerator "generator" generator
            if t.device.``type`` = gdev.``type`` && (gdev.``type`` = DeviceType.CPU || t.device.index = gdev.index) then
                t.normal_ (0.0, 1.0, generator) |> ignore
            else
                use tmp = torch.empty (t.shape, dtype = t.dtype, device = gdev)
                tmp.normal_ (0.0, 1.0, generator) |> ignore
                t.copy_ (tmp) |> ignore
        { Fill = fill; Description = "generator" }

    /// Noise from a fresh generator seeded with `seed` on `device` (the stream PyTorch's
    /// `torch.Generator().manual_seed(seed)` gives).
    let fromSeed (seed: int64) (device: torch.Device) : Noise =
        Native.ensureLoaded ()
        let g = new torch.Generator(uint64 seed, device)
        { fromGenerator g with Description = sprintf "seed %d" seed }

    // SplitMix64 finaliser: decorrelates the per-sample seeds derived from (seed, index).
    let private mix (z: uint64) =
        let z = (z ^^^ (z >>> 30)) * 0xbf58476d1ce4e5b9UL
        let z = (z ^^^ (z >>> 27)) * 0x94d049bb133111ebUL
        z ^^^ (z >>> 31)

    /// Seed of sample `index`'s stream under `perSample seed`.
    let sampleSeed (seed: int64) (index: int) : uint64 = mix (uint64 seed + 0x9e3779b97f4a7c15UL * (uint64 index + 1UL))

    /// Per-sample noise for a batch that holds samples first, first + 1, ... of a larger run: row i
    /// draws from the stream of sample first + i, seeded by (seed, first + i). A run split into batches
    /// (or over machines, `scoresde sample --shard`) gives every sample the noise it gets in one batch.
    let perSampleFrom (seed: int64) (first: int) : Noise =
        Native.ensureLoaded ()
        if first < 0 then
            Check.fail "first" first "a sample index >= 0"
        let generators = Dictionary<int * string, torch.Generator>()
        let fill (t: Tensor) =
            let batch = if t.dim () = 0L then 1 else int t.shape.[0]
            let dev = t.device
            for i in 0 .. batch - 1 do
                let key = (i, dev.ToString())
                let g =
                    match generators.TryGetValue key with
                    | true, g -> g
                    | _ ->
                        let g = new torch.Generator(sampleSeed seed (first + i), dev)
                        generators.[key] <- g
                        g
                if t.dim () = 0L then
                    t.normal_ (0.0, 1.0, g) |> ignore
                else
                    use row = t.select (0L, int64 i)
                    row.normal_ (0.0, 1.0, g) |> ignore
        { Fill = fill
          Description =
            (if first = 0 then
                 sprintf "per-sample seed %d" seed
             else
                 sprintf "per-sample seed %d from sample %d" seed first) }

    /// Batch-size-independent noise: sample i of every batch draws from its own stream, seeded by
    /// (seed, i). Sample i then gets the same noise whatever the batch size, so a batch of 1 reproduces
    /// the first sample of a batch of 1000. Costs one generator call per sample per draw.
    let perSample (seed: int64) : Noise = perSampleFrom seed 0

    /// A faster source of N(0, 1) noise for the core samplers, offered as an option: it does NOT give
    /// PyTorch's stream (use `fromGenerator` for that; the diffusers-compatible scheduler always does).
    /// Draws come from Doornik's ziggurat on xoshiro256++ streams, computed in managed code straight
    /// into a CPU tensor's memory, counter-based: fill k of this source splits the tensor into blocks
    /// of 65,536 elements and block b draws from its own stream seeded by (seed, k, b). Values depend
    /// only on the seed, the fill count and the element index (not on the thread count); large tensors
    /// are filled on up to torch.get_num_threads() threads. Other dtypes and devices are filled on the
    /// CPU in float32 or float64 and copied over. Statistically exact normal draws (up to the 53-bit
    /// resolution of the uniforms), independent across elements, fills and seeds in the usual sense of
    /// seeded pseudo-random streams.
    let fast (seed: int64) : Noise =
        Native.ensureLoaded ()
        let fills = ref 0L
        let fill (t: Tensor) =
            let k = fills.Value
            fills.Value <- k + 1L
            let threads = max 1 (torch.get_num_threads ())
            if
                t.device_type = DeviceType.CPU
                && t.is_contiguous ()
                && (t.dtype = torch.float32 || t.dtype = torch.float64)
            then
                FastNormal.fill seed k threads t
            else
                let hostType = if t.dtype = torch.float64 then torch.float64 else torch.float32
                use tmp = torch.empty (t.shape, dtype = hostType, device = torch.CPU)
                FastNormal.fill seed k threads tmp
                t.copy_ (tmp) |> ignore
        { Fill = fill; Description = sprintf "fast seed %d" seed }

    /// A fresh tensor of standard normal draws with the given shape, dtype and device.
    let draw (noise: Noise) (shape: int64[]) (dtype: torch.ScalarType) (device: torch.Device) : Tensor =
        let t = torch.empty (shape, dtype = dtype, device = device)
        noise.Fill t
        t

    /// A fresh tensor of standard normal draws shaped like x.
    let drawLike (noise: Noise) (x: Tensor) : Tensor = draw noise x.shape x.dtype x.device
