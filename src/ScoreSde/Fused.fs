namespace ScoreSde

#nowarn "9" // native pointers into a CPU tensor's memory

open System
open System.Numerics
open System.Runtime.CompilerServices
open System.Runtime.InteropServices
open System.Threading.Tasks
open Microsoft.FSharp.NativeInterop
open TorchSharp

/// Fused element-wise kernels for contiguous float32 and float64 CPU tensors: the linear
/// combinations a sampling step is made of, computed in one pass over memory with SIMD
/// (`System.Numerics.Vector`) instead of one libtorch operation per term. On image-sized tensors
/// every libtorch pass reads and writes the whole state, so a step of three passes costs three times
/// the memory traffic of this one.
///
/// Each function returns false, having done nothing, when a tensor is not eligible (another device
/// or dtype, not contiguous, a size that differs, part of an autograd graph, or an output that
/// partly overlaps an input); callers then use tensor operations, which give the same values up to
/// the rounding of the intermediate products (one or two ulps).
module internal Fused =
    /// Elements per work item when a kernel runs on more than one thread.
    [<Literal>]
    let private Chunk = 65536

    let private address (t: Tensor) : nativeint =
        NativePtr.toNativeInt (NativePtr.ofVoidPtr<byte>(Unsafe.AsPointer(&MemoryMarshal.GetReference(t.bytes))))

    let private eligible (dtype: torch.ScalarType) (n: int64) (t: Tensor) =
        t.device_type = DeviceType.CPU
        && t.dtype = dtype
        && t.numel () = n
        && t.is_contiguous ()
        && not t.requires_grad

    /// The byte size shared by `first` and every other tensor (nulls are skipped) when all are
    /// eligible: contiguous float32 or float64 CPU tensors of first's dtype and size (at least one
    /// element, at most Int32.MaxValue), outside autograd. None otherwise.
    let private commonBytes (first: Tensor) (others: Tensor list) : int64 option =
        let n = first.numel ()
        let dtype = first.dtype
        let size =
            if dtype = torch.float32 then 4L
            elif dtype = torch.float64 then 8L
            else 0L
        if
            size = 0L
            || n = 0L
            || n > int64 Int32.MaxValue
            || not (eligible dtype n first && others |> List.forall (fun t -> isNull t || eligible dtype n t))
        then
            None
        else
            Some(n * size)

    /// Two tensors of `bytes` bytes at p and q share no memory.
    let private apart (bytes: int64) (p: nativeint) (q: nativeint) = p + nativeint bytes <= q || q + nativeint bytes <= p

    /// An output may be an input itself (element i only depends on element i of each input), but
    /// must not overlap one at a shifted position.
    let private safeOutput (bytes: int64) (out: nativeint) (input: nativeint) = out = input || apart bytes out input

    // Runs body 0 .. items - 1 on torch's intra-op thread count when the tensor (n elements) is large
    // enough for the split to pay, else in order on this thread.
    let private parallelFor (items: int) (n: int64) (body: int -> unit) =
        let threads = torch.get_num_threads ()
        if threads <= 1 || items <= 1 || n < int64 (4 * Chunk) then
            for i in 0 .. items - 1 do
                body i
        else
            Parallel.For(0, items, ParallelOptions(MaxDegreeOfParallelism = threads), Action<int>(body))
            |> ignore

    // Runs body start count over [0, n) in chunks of `Chunk` elements (see parallelFor).
    let private forRanges (n: int) (body: int -> int -> unit) =
        parallelFor ((n + Chunk - 1) / Chunk) (int64 n) (fun k ->
            let start = k * Chunk
            body start (min Chunk (n - start)))

    let inline private span<'T when 'T: unmanaged> (p: nativeint) (start: int) (count: int) =
        Span<'T>(NativePtr.toVoidPtr (NativePtr.add (NativePtr.ofNativeInt<'T> p) start), count)

    let inline private vectors<'T when 'T: unmanaged and 'T: struct and 'T: (new: unit -> 'T) and 'T :> ValueType> (s: Span<'T>) =
        MemoryMarshal.Cast<'T, Vector<'T>>(s)

    // dst <- a x + b y (+ c z when hasZ) over one range.
    let inline private lin3Range<'T
        when 'T: unmanaged
        and 'T: struct
        and 'T: (new: unit -> 'T)
        and 'T :> ValueType
        and 'T: (static member (*): 'T * 'T -> 'T)
        and 'T: (static member (+): 'T * 'T -> 'T)>
        (dst: nativeint)
        (x: nativeint)
        (y: nativeint)
        (z: nativeint)
        (hasZ: bool)
        (a: 'T)
        (b: 'T)
        (c: 'T)
        (start: int)
        (count: int)
        =
        let d = span<'T> dst start count
        let xs = span<'T> x start count
        let ys = span<'T> y start count
        let vd = vectors d
        let vx = vectors xs
        let vy = vectors ys
        let va, vb = Vector<'T>(a), Vector<'T>(b)
        let tail = vd.Length * Vector<'T>.Count
        if hasZ then
            let zs = span<'T> z start count
            let vz = vectors zs
            let vc = Vector<'T>(c)
            for i in 0 .. vd.Length - 1 do
                vd.[i] <- va * vx.[i] + vb * vy.[i] + vc * vz.[i]
            for i in tail .. count - 1 do
                d.[i] <- a * xs.[i] + b * ys.[i] + c * zs.[i]
        else
            for i in 0 .. vd.Length - 1 do
                vd.[i] <- va * vx.[i] + vb * vy.[i]
            for i in tail .. count - 1 do
                d.[i] <- a * xs.[i] + b * ys.[i]

    // mean <- a x + b y; sample <- c sample + mean, over one range.
    let inline private meanSampleRange<'T
        when 'T: unmanaged
        and 'T: struct
        and 'T: (new: unit -> 'T)
        and 'T :> ValueType
        and 'T: (static member (*): 'T * 'T -> 'T)
        and 'T: (static member (+): 'T * 'T -> 'T)>
        (mean: nativeint)
        (sample: nativeint)
        (x: nativeint)
        (y: nativeint)
        (a: 'T)
        (b: 'T)
        (c: 'T)
        (start: int)
        (count: int)
        =
        let m = span<'T> mean start count
        let s = span<'T> sample start count
        let xs = span<'T> x start count
        let ys = span<'T> y start count
        let vm = vectors m
        let vs = vectors s
        let vx = vectors xs
        let vy = vectors ys
        let va, vb, vc = Vector<'T>(a), Vector<'T>(b), Vector<'T>(c)
        for i in 0 .. vm.Length - 1 do
            let mi = va * vx.[i] + vb * vy.[i]
            vm.[i] <- mi
            vs.[i] <- vc * vs.[i] + mi
        for i in vm.Length * Vector<'T>.Count .. count - 1 do
            let mi = a * xs.[i] + b * ys.[i]
            m.[i] <- mi
            s.[i] <- c * s.[i] + mi

    // Specialised per dtype and compiled fully optimised from the first call: a large tensor is one
    // long loop per call, which tiered compilation would otherwise run unoptimised for many calls.
    [<MethodImpl(MethodImplOptions.AggressiveOptimization)>]
    let private lin3F32 pd px py pz hasZ (a: float32) b c start count = lin3Range<float32> pd px py pz hasZ a b c start count
    [<MethodImpl(MethodImplOptions.AggressiveOptimization)>]
    let private lin3F64 pd px py pz hasZ (a: float) b c start count = lin3Range<float> pd px py pz hasZ a b c start count
    [<MethodImpl(MethodImplOptions.AggressiveOptimization)>]
    let private meanSampleF32 pm ps px py (a: float32) b c start count = meanSampleRange<float32> pm ps px py a b c start count
    [<MethodImpl(MethodImplOptions.AggressiveOptimization)>]
    let private meanSampleF64 pm ps px py (a: float) b c start count = meanSampleRange<float> pm ps px py a b c start count

    /// dst <- a x + b y + c z in one pass (z may be null: no third term). dst may be x, y or z itself.
    let tryLinear (dst: Tensor) (a: float) (x: Tensor) (b: float) (y: Tensor) (c: float) (z: Tensor) : bool =
        match commonBytes dst [ x; y; z ] with
        | None -> false
        | Some bytes ->
            let hasZ = not (isNull z)
            let pd, px, py = address dst, address x, address y
            let pz = if hasZ then address z else 0n
            if not (safeOutput bytes pd px && safeOutput bytes pd py && (not hasZ || safeOutput bytes pd pz)) then
                false
            else
                let n = int (dst.numel ())
                if dst.dtype = torch.float32 then
                    forRanges n (lin3F32 pd px py pz hasZ (float32 a) (float32 b) (float32 c))
                else
                    forRanges n (lin3F64 pd px py pz hasZ a b c)
                true

    /// mean <- a x + b y and sample <- c sample + mean in one pass: the mean and the sample of a
    /// stochastic step whose noise was already drawn into sample. mean and sample are the caller's
    /// fresh outputs (distinct from each other and from x and y); x and y are only read.
    let tryMeanAndSample (mean: Tensor) (sample: Tensor) (a: float) (x: Tensor) (b: float) (y: Tensor) (c: float) : bool =
        match commonBytes x [ mean; sample; y ] with
        | None -> false
        | Some bytes ->
            let pm, ps, px, py = address mean, address sample, address x, address y
            let apart = apart bytes
            if not (apart pm ps && apart pm px && apart pm py && apart ps px && apart ps py) then
                false
            else
                let n = int (x.numel ())
                if x.dtype = torch.float32 then
                    forRanges n (meanSampleF32 pm ps px py (float32 a) (float32 b) (float32 c))
                else
                    forRanges n (meanSampleF64 pm ps px py a b c)
                true

    // ---- per-sample (row-wise) kernels: a [B, ...] tensor as B rows of numel / B elements ----

    let inline private sumSquaresRange<'T
        when 'T: unmanaged
        and 'T: struct
        and 'T: (new: unit -> 'T)
        and 'T :> ValueType
        and 'T: (static member (*): 'T * 'T -> 'T)
        and 'T: (static member (+): 'T * 'T -> 'T)
        and 'T: (static member op_Explicit: 'T -> float)>
        (p: nativeint)
        (start: int)
        (count: int)
        : float =
        // SIMD sums of squares in the element type over blocks of 32 vectors, each block's total added
        // in float64: the float32 rounding stays that of a 32-term sum per lane.
        let v = span<'T> p start count
        let vv = vectors v
        let mutable total = 0.0
        let mutable i = 0
        while i < vv.Length do
            let stop = min vv.Length (i + 32)
            let mutable acc = Vector<'T>.Zero
            while i < stop do
                let e = vv.[i]
                acc <- acc + e * e
                i <- i + 1
            total <- total + float (Vector.Sum acc)
        for j in vv.Length * Vector<'T>.Count .. count - 1 do
            let d = float v.[j]
            total <- total + d * d
        total

    [<MethodImpl(MethodImplOptions.AggressiveOptimization)>]
    let private sumSquaresF32 p start count = sumSquaresRange<float32> p start count
    [<MethodImpl(MethodImplOptions.AggressiveOptimization)>]
    let private sumSquaresF64 p start count = sumSquaresRange<float> p start count

    /// Per-row sums of squares (in float64) of t seen as [B, numel / B] rows; None when t is not an
    /// eligible tensor (see the module's conditions) or has no batch dimension.
    let tryRowSumSquares (t: Tensor) : float[] option =
        match commonBytes t [] with
        | Some _ when t.dim () >= 1L ->
            let n = t.numel ()
            let rows = int (t.size (0))
            let len = int n / rows
            let p = address t
            let sums = Array.zeroCreate<float> rows
            let isFloat32 = t.dtype = torch.float32
            parallelFor rows n (fun r -> sums.[r] <- if isFloat32 then sumSquaresF32 p (r * len) len else sumSquaresF64 p (r * len) len)
            Some sums
        | _ -> None

    /// x <- x + b_r y + c_r z row by row (b and c hold one coefficient per row; z may be null: no
    /// third term), one pass; x must not be y or z. False, having done nothing, when not eligible.
    let tryRowUpdate (x: Tensor) (b: float[]) (y: Tensor) (c: float[]) (z: Tensor) : bool =
        match commonBytes x [ y; z ] with
        | Some bytes when x.dim () >= 1L ->
            let hasZ = not (isNull z)
            let n = x.numel ()
            let rows = int (x.size (0))
            let px, py = address x, address y
            let pz = if hasZ then address z else 0n
            if
                b.Length <> rows
                || (hasZ && c.Length <> rows)
                || not (apart bytes px py && (not hasZ || apart bytes px pz))
            then
                false
            else
                let len = int n / rows
                let isFloat32 = x.dtype = torch.float32
                parallelFor rows n (fun r ->
                    let cr = if hasZ then c.[r] else 0.0
                    if isFloat32 then
                        lin3F32 px px py pz hasZ 1.0f (float32 b.[r]) (float32 cr) (r * len) len
                    else
                        lin3F64 px px py pz hasZ 1.0 b.[r] cr (r * len) len)
                true
        | _ -> false
