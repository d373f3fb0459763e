namespace ScoreSde

#nowarn "9" // native pointers into a CPU tensor's memory

open System
open System.Numerics
open System.Runtime.CompilerServices
open System.Runtime.InteropServices
open System.Threading.Tasks
open Microsoft.FSharp.NativeInterop
open TorchSharp

/// Standard normal draws in managed code, written straight into a CPU tensor's memory: Doornik's
/// 256-layer ziggurat (ZIGNOR, "An Improved Ziggurat Method to Generate Normal Random Samples", 2005),
/// exact up to the resolution of its uniforms, on xoshiro256++ streams (Blackman & Vigna).
///
/// Counter-based: the k-th fill of a source with seed s splits the tensor into blocks of `BlockSize`
/// elements and fills block b from a stream seeded by (s, k, b) through SplitMix64. The values thus
/// depend on the seed, the fill count and the element index only, not on how many threads fill the
/// blocks.
module internal FastNormal =
    /// Elements per block (one independent stream each).
    [<Literal>]
    let BlockSize = 65536

    let private layers = 256
    // Right edge of the base layer and the common area of the layers for 256 layers (Doornik 2005).
    let private r = 3.6541528853610088
    let private area = 0.00492867323399

    /// x.[i]: the layer edges (x.[0] = area / f(R) for the base strip, x.[1] = R, x.[256] = 0);
    /// ratio.[i] = x.[i + 1] / x.[i], the fast-path acceptance bound of layer i.
    let private x, ratio =
        let x = Array.zeroCreate<float>(layers + 1)
        let mutable f = Math.Exp(-0.5 * r * r)
        x.[0] <- area / f
        x.[1] <- r
        x.[layers] <- 0.0
        for i in 2 .. layers - 1 do
            x.[i] <- Math.Sqrt(-2.0 * Math.Log(area / x.[i - 1] + f))
            f <- Math.Exp(-0.5 * x.[i] * x.[i])
        x, Array.init layers (fun i -> x.[i + 1] / x.[i])

    /// SplitMix64 step: the seeding generator of the xoshiro family.
    let inline private splitMix (state: byref<uint64>) =
        state <- state + 0x9e3779b97f4a7c15UL
        let mutable z = state
        z <- (z ^^^ (z >>> 30)) * 0xbf58476d1ce4e5b9UL
        z <- (z ^^^ (z >>> 27)) * 0x94d049bb133111ebUL
        z ^^^ (z >>> 31)

    /// One xoshiro256++ output; the state lives in the caller's locals.
    let inline private xoshiro (s0: byref<uint64>) (s1: byref<uint64>) (s2: byref<uint64>) (s3: byref<uint64>) =
        let result = BitOperations.RotateLeft(s0 + s3, 23) + s0
        let t = s1 <<< 17
        s2 <- s2 ^^^ s0
        s3 <- s3 ^^^ s1
        s1 <- s1 ^^^ s2
        s0 <- s0 ^^^ s3
        s2 <- s2 ^^^ t
        s3 <- BitOperations.RotateLeft(s3, 45)
        result

    /// Uniform on (0, 1) from 53 bits, never 0.
    let inline private uniform (bits: uint64) = (float (bits >>> 11) + 0.5) * (1.0 / 9007199254740992.0)

    /// The rare branches of a draw whose fast test failed (layer i, u in [-1, 1)): the tail beyond R
    /// (Marsaglia 1964) for the base layer, the wedge test otherwise. NaN means rejected: draw again.
    let private slow (s0: byref<uint64>) (s1: byref<uint64>) (s2: byref<uint64>) (s3: byref<uint64>) (i: int) (u: float) =
        if i = 0 then
            let mutable xv = 0.0
            let mutable go = true
            while go do
                xv <- Math.Log(uniform (xoshiro &s0 &s1 &s2 &s3)) / r
                let y = Math.Log(uniform (xoshiro &s0 &s1 &s2 &s3))
                go <- -2.0 * y < xv * xv
            if u < 0.0 then xv - r else r - xv
        else
            let xu = u * x.[i]
            let f0 = Math.Exp(-0.5 * (x.[i] * x.[i] - xu * xu))
            let f1 = Math.Exp(-0.5 * (x.[i + 1] * x.[i + 1] - xu * xu))
            if f1 + uniform (xoshiro &s0 &s1 &s2 &s3) * (f0 - f1) < 1.0 then xu else nan

    /// Seed of block b of fill k of a source seeded with s.
    let blockSeed (seed: int64) (fillIndex: int64) (block: int64) =
        let mutable sm = uint64 seed
        let a = splitMix &sm
        let mutable s2 = a ^^^ (uint64 fillIndex * 0xd1b54a32d192ed03UL)
        let b = splitMix &s2
        let mutable s3 = b ^^^ (uint64 block * 0x8cb92ba72f3d8dd7UL)
        splitMix &s3

    let private fillBlock (p: nativeint) (isFloat32: bool) (count: int) (seed: uint64) =
        let mutable sm = seed
        let mutable s0 = splitMix &sm
        let mutable s1 = splitMix &sm
        let mutable s2 = splitMix &sm
        let mutable s3 = splitMix &sm
        // References to the tables' first elements: indexed with Unsafe.Add, no bounds checks (i < 256).
        let xs = &MemoryMarshal.GetArrayDataReference(x)
        let rs = &MemoryMarshal.GetArrayDataReference(ratio)
        let f32 = NativePtr.ofNativeInt<float32> p
        let f64 = NativePtr.ofNativeInt<float> p
        let mutable j = 0
        while j < count do
            let bits = xoshiro &s0 &s1 &s2 &s3
            // Bits 8..63 (signed) give u uniform on [-1, 1); bits 0..7 pick the layer.
            let u = float (int64 bits >>> 8) * (1.0 / 36028797018963968.0)
            let i = int (bits &&& 0xFFUL)
            let v = if Math.Abs u < Unsafe.Add(&rs, i) then u * Unsafe.Add(&xs, i) else slow &s0 &s1 &s2 &s3 i u
            if not (Double.IsNaN v) then
                if isFloat32 then NativePtr.set f32 j (float32 v) else NativePtr.set f64 j v
                j <- j + 1

    /// Fill a contiguous float32 or float64 CPU tensor with N(0, 1) draws: fill number `fillIndex` of
    /// the source seeded with `seed`; blocks run in parallel on up to `threads` threads.
    let fill (seed: int64) (fillIndex: int64) (threads: int) (t: torch.Tensor) =
        let n = t.numel ()
        if n > 0L then
            let isFloat32 = t.dtype = torch.float32
            let size = if isFloat32 then 4L else 8L
            let basePtr = NativePtr.toNativeInt (NativePtr.ofVoidPtr<byte>(Unsafe.AsPointer(&MemoryMarshal.GetReference(t.bytes))))
            let blocks = (n + int64 BlockSize - 1L) / int64 BlockSize
            let run (b: int64) =
                let start = b * int64 BlockSize
                let count = int (min (int64 BlockSize) (n - start))
                fillBlock (basePtr + nativeint (start * size)) isFloat32 count (blockSeed seed fillIndex b)
            if blocks = 1L || threads <= 1 then
                for b in 0L .. blocks - 1L do
                    run b
            else
                Parallel.For(0L, blocks, ParallelOptions(MaxDegreeOfParallelism = threads), Action<int64>(run))
                |> ignore
