namespace ScoreSde

open System
open System.Collections.Generic
open TorchSharp

/// A source of standard normal noise. `Fill` overwrites a tensor in place with N(0, 1) draws.
/// Randomness only ever comes from a generator the caller supplied or a seed the caller chose.
type Noise =
    { Fill: Tensor -> unit
      /// Human-readable description (for logs and errors).
      Description: string }

[<RequireQualifiedAccess>]
module Noise =
    /// Noise from a caller's generator: one stream for the whole batch. On CPU this is the same
    /// stream as PyTorch's `torch.randn(shape, generator=g)` for the same seed, so seeded loops
    /// reproduce Python numbers. The generator's state advances; it is never reseeded or disposed.
    /// A generator on another device than the tensor (a CPU generator with GPU tensors) draws on its
    /// own device and the draws are copied over, as diffusers' randn_tensor does.
    let fromGenerator (generator: torch.Generator) : Noise =
        Check.notNull "generator" generator
        let gdev = generator.device
        let fill (t: Tensor) =
            if t.device.``type`` = gdev.``type`` && (gdev.``type`` = DeviceType.CPU || t.device.index = gdev.index) then
                t.normal_(0.0, 1.0, generator) |> ignore
            else
                use tmp = torch.empty(t.shape, dtype = t.dtype, device = gdev)
                tmp.normal_(0.0, 1.0, generator) |> ignore
                t.copy_(tmp) |> ignore
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
    let sampleSeed (seed: int64) (index: int) : uint64 =
        mix (uint64 seed + 0x9e3779b97f4a7c15UL * (uint64 index + 1UL))

    /// Batch-size-independent noise: sample i of every batch draws from its own stream, seeded by
    /// (seed, i). Sample i then gets the same noise whatever the batch size, so a batch of 1 reproduces
    /// the first sample of a batch of 1000. Costs one generator call per sample per draw.
    let perSample (seed: int64) : Noise =
        Native.ensureLoaded ()
        let generators = Dictionary<int * string, torch.Generator>()
        let fill (t: Tensor) =
            let batch = if t.dim() = 0L then 1 else int t.shape.[0]
            let dev = t.device
            for i in 0 .. batch - 1 do
                let key = (i, dev.ToString())
                let g =
                    match generators.TryGetValue key with
                    | true, g -> g
                    | _ ->
                        let g = new torch.Generator(sampleSeed seed i, dev)
                        generators.[key] <- g
                        g
                if t.dim() = 0L then t.normal_(0.0, 1.0, g) |> ignore
                else
                    use row = t.select(0L, int64 i)
                    row.normal_(0.0, 1.0, g) |> ignore
        { Fill = fill; Description = sprintf "per-sample seed %d" seed }

    /// A fresh tensor of standard normal draws with the given shape, dtype and device.
    let draw (noise: Noise) (shape: int64[]) (dtype: torch.ScalarType) (device: torch.Device) : Tensor =
        let t = torch.empty(shape, dtype = dtype, device = device)
        noise.Fill t
        t

    /// A fresh tensor of standard normal draws shaped like x.
    let drawLike (noise: Noise) (x: Tensor) : Tensor = draw noise x.shape x.dtype x.device
