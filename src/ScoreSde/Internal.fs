namespace ScoreSde

open System
open TorchSharp

type Tensor = torch.Tensor

/// Argument checks shared by every module: each failure names the parameter and the value.
module internal Check =
    /// A shape as C# and Python print it: [4, 2] ([] for a 0-d tensor).
    let shapeText (shape: int64[]) = "[" + String.Join(", ", shape) + "]"

    /// A value for a message: shapes and arrays as [4, 2], everything else as F# prints it.
    let valueText (value: obj) =
        match value with
        | :? (int64[]) as a -> shapeText a
        | :? (int[]) as a -> "[" + String.Join(", ", a) + "]"
        | :? (float[]) as a ->
            "["
            + String.Join(", ", a |> Array.map (fun v -> v.ToString("R", Globalization.CultureInfo.InvariantCulture)))
            + "]"
        | _ -> sprintf "%A" value

    let fail (param: string) (value: obj) (requirement: string) : 'a =
        raise (ArgumentException(sprintf "%s must be %s (got %s)." param requirement (valueText value), param))

    let finite (param: string) (v: float) =
        if Double.IsNaN v || Double.IsInfinity v then
            fail param v "a finite number"

    let positive (param: string) (v: float) =
        finite param v
        if v <= 0.0 then
            fail param v "positive"

    let positiveInt (param: string) (v: int) =
        if v < 1 then
            fail param v "at least 1"

    let nonNegativeInt (param: string) (v: int) =
        if v < 0 then
            fail param v "zero or more"

    let notNull (param: string) (v: obj) =
        if isNull v then
            raise (ArgumentNullException(param, sprintf "%s must not be null." param))

    /// A live torch.Generator. A disposed one has a null handle, and TorchSharp then draws from torch's
    /// global generator without a word: refused with an ObjectDisposedException naming the parameter.
    let liveGenerator (param: string) (g: torch.Generator) =
        notNull param g
        if g.Handle = 0n then
            raise (
                ObjectDisposedException(
                    param,
                    sprintf
                        "%s is a disposed torch.Generator; pass a live one (a disposed generator would draw from torch's global generator)."
                        param
                )
            )

    /// A model output in the state's dtype: the output itself when the dtypes agree, a converted copy
    /// when the output is floating-point of another precision (float16, bfloat16, float64 for a float32
    /// state, ...), else an InvalidOperationException naming both dtypes. `what` names the output in
    /// the message ("The model's output", or a parameter).
    let outputDtype (what: string) (out: Tensor) (x: Tensor) : Tensor =
        if out.dtype = x.dtype then
            out
        elif torch.is_floating_point out then
            out.to_type (x.dtype)
        else
            raise (
                InvalidOperationException(
                    sprintf
                        "%s has dtype %O; it must be a floating-point tensor, the state's dtype %O (a floating-point output of another precision is converted to %O)."
                        what
                        out.dtype
                        x.dtype
                        x.dtype
                )
            )

    let floating (param: string) (t: Tensor) =
        notNull param t
        if not (torch.is_floating_point t) then
            fail param t.dtype "a floating-point tensor (float32 or float64)"

    let shape (param: string) (shape: int64[]) =
        notNull param shape
        if shape.Length = 0 then
            fail param shape "non-empty, its first entry the batch size"
        if shape |> Array.exists (fun d -> d < 1L) then
            fail param shape "all positive sizes"

    /// Whether two tensors have the same shape, compared size by size: `dim` and `size(i)` are cheap
    /// native calls, while TorchSharp's `shape` property costs about 1.7 microseconds (measured here),
    /// which a sampler loop would pay on every model evaluation.
    let shapesEqual (t: Tensor) (reference: Tensor) =
        let d = t.dim ()
        let mutable same = d = reference.dim ()
        let mutable i = 0
        while same && int64 i < d do
            same <- t.size (i) = reference.size (i)
            i <- i + 1
        same

    let sameShape (param: string) (t: Tensor) (reference: Tensor) (referenceName: string) =
        // The shape arrays are built only for the message.
        if not (shapesEqual t reference) then
            raise (
                ArgumentException(
                    sprintf
                        "%s has shape %s but %s has shape %s; they must match."
                        param
                        (shapeText t.shape)
                        referenceName
                        (shapeText reference.shape),
                    param
                )
            )

/// Small numerical helpers on host doubles (public so that the SDE's inline coefficient functions can
/// use them).
[<RequireQualifiedAccess>]
module HostMath =
    /// exp(x) - 1 without cancellation for small |x| (Kahan's trick; .NET's ExpM1 is exp(x) - 1).
    let expm1 (x: float) =
        let u = Math.Exp x
        if u = 1.0 then x
        elif u - 1.0 = -1.0 then -1.0
        elif Double.IsPositiveInfinity u then u
        else (u - 1.0) * x / Math.Log u

    /// log(1 + x) without cancellation for small |x|.
    let log1p (x: float) =
        let u = 1.0 + x
        if u = 1.0 then x else Math.Log u * x / (u - 1.0)

/// Tensor helpers used across the core.
module internal Tensors =
    /// A host double as a TorchSharp Scalar (explicit: Tensor also converts implicitly from double).
    /// Bind it (`use s = scalar v`) for the duration of the call that takes it: a Scalar has a
    /// finalizer, and one passed inline can be collected while native code still reads it.
    let inline scalar (v: float) : Scalar = Scalar.op_Implicit v

    /// t * v with the Scalar kept alive for the native call.
    let mulScalar (t: Tensor) (v: float) : Tensor =
        use s = scalar v
        t.mul (s)

    /// t + v with the Scalar kept alive for the native call.
    let addScalar (t: Tensor) (v: float) : Tensor =
        use s = scalar v
        use one = scalar 1.0
        t.add (s, one)

    /// t / v with the Scalar kept alive for the native call.
    let divScalar (t: Tensor) (v: float) : Tensor =
        use s = scalar v
        t.div (s)

    /// a t + b (both host doubles) with the Scalars kept alive.
    let affine (t: Tensor) (a: float) (b: float) : Tensor =
        use sa = scalar a
        use sb = scalar b
        use one = scalar 1.0
        use ta = t.mul (sa)
        ta.add (sb, one)

    /// Reshape a time tensor (0-d, or one value per batch element) so that it broadcasts over x's
    /// trailing dimensions.
    /// Always a new tensor object (a view), never t itself, so callers may dispose the result
    /// without disposing the caller's tensor.
    let broadcastTime (param: string) (t: Tensor) (x: Tensor) : Tensor =
        if t.numel () = 1L then
            t.reshape ([||])
        elif x.dim () > 0L && t.numel () = x.shape.[0] then
            let shape = Array.init (int (x.dim ())) (fun i -> if i = 0 then x.shape.[0] else 1L)
            t.reshape (shape)
        else
            raise (
                ArgumentException(
                    sprintf
                        "%s must hold one value or one value per batch element (%d); got %d elements (shape %s)."
                        param
                        (if x.dim () > 0L then x.shape.[0] else 1L)
                        (t.numel ())
                        (Check.shapeText t.shape),
                    param
                )
            )

    /// Per-sample coefficient tensor [B, 1, 1, ...] in x's dtype and device.
    let perSample (values: float[]) (x: Tensor) : Tensor =
        let shape = Array.init (int (x.dim ())) (fun i -> if i = 0 then int64 values.Length else 1L)
        torch.tensor(values, dtype = x.dtype, device = x.device).reshape(shape)

    /// Host copy of a time tensor as doubles (one per element).
    let toHost (t: Tensor) : float[] =
        // Every intermediate gets its own binding: TorchSharp returns a new wrapper from each call,
        // even when no copy is made, and each wrapper must be disposed.
        use d = t.detach ()
        use c = d.cpu ()
        use f = c.to_type (torch.float64)
        use t64 = f.contiguous ()
        t64.data<float>().ToArray()

    /// t <- v everywhere, as the samplers refill their time buffers before every model call: written
    /// straight into the memory of a contiguous float32 or float64 CPU tensor (no native call, no
    /// Scalar), else through fill_ with the Scalar kept alive for the call.
    let fillHost (t: Tensor) (v: float) =
        let direct = t.device_type = DeviceType.CPU && t.is_contiguous () && not t.requires_grad
        if direct && t.dtype = torch.float32 then
            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float32>(t.bytes).Fill(float32 v)
        elif direct && t.dtype = torch.float64 then
            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.bytes).Fill(v)
        else
            use s = scalar v
            t.fill_ (s) |> ignore

    /// Host copy of a small tensor as doubles, read straight from its memory when it is a contiguous
    /// float32 or float64 CPU tensor (the common case of a time argument: no tensor is created, no
    /// copy is made on the native side); anything else goes through `toHost`.
    let readHost (t: Tensor) : float[] =
        if
            t.device_type = DeviceType.CPU
            && t.is_contiguous ()
            && (t.dtype = torch.float32 || t.dtype = torch.float64)
        then
            let n = int (t.numel ())
            let r = Array.zeroCreate<float> n
            if t.dtype = torch.float32 then
                let v = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float32>(t.bytes)
                for i in 0 .. n - 1 do
                    r.[i] <- float v.[i]
            else
                let v = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.bytes)
                for i in 0 .. n - 1 do
                    r.[i] <- v.[i]
            r
        else
            toHost t

    /// A [B] tensor of times, all equal to t, in x's dtype and device.
    let fullTime (batch: int64) (t: float) (dtype: torch.ScalarType) (device: torch.Device) : Tensor =
        use s = scalar t
        torch.full ([| batch |], s, dtype = dtype, device = device)

    /// f applied to the model output `out` in x's dtype (`Check.outputDtype`, `what` naming the output):
    /// a converted copy is disposed afterwards, the caller's tensor never.
    let withDtypeOf (what: string) (out: Tensor) (x: Tensor) (f: Tensor -> 'a) : 'a =
        let converted = Check.outputDtype what out x
        try
            f converted
        finally
            if not (obj.ReferenceEquals(converted, out)) then
                converted.Dispose()

    /// a + b with the alpha Scalar bound (TorchSharp's `a + b` and `a.add (b)` create it inline).
    let add (a: Tensor) (b: Tensor) : Tensor =
        use one = scalar 1.0
        a.add (b, one)

    /// a <- a + b in place, the alpha Scalar bound; returns a.
    let addInPlace (a: Tensor) (b: Tensor) : Tensor =
        use one = scalar 1.0
        a.add_ (b, one)

    /// a - b with the alpha Scalar bound (a + (-1) b: the same value, the negation being exact).
    let sub (a: Tensor) (b: Tensor) : Tensor =
        use minusOne = scalar -1.0
        a.add (b, minusOne)

    /// t * t (libtorch's square is pow(t, 2) with an inline Scalar; its result is t * t exactly).
    let square (t: Tensor) : Tensor = t.mul (t)

    // Whether every element is finite: x - x is 0 for a finite x and NaN for NaN or an infinity, and
    // NaN survives the sums, so one vectorised pass with no branch per element decides. Four
    // accumulators, so that the additions do not wait on each other (one accumulator measured about
    // 4x slower: the pass was bound by the addition's latency).
    // Optimised from the first call (no tier-0 code: a sampler's first calls would scan slowly).
    [<System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)>]
    let private finiteIn<'T when 'T: struct and 'T: (new: unit -> 'T) and 'T :> ValueType> (values: Span<'T>) (isFinite: 'T -> bool) =
        let vectors = System.Runtime.InteropServices.MemoryMarshal.Cast<'T, System.Numerics.Vector<'T>>(values)
        let mutable a0 = System.Numerics.Vector<'T>.Zero
        let mutable a1 = a0
        let mutable a2 = a0
        let mutable a3 = a0
        let quads = vectors.Length / 4
        for i in 0 .. quads - 1 do
            let v0 = vectors.[4 * i]
            let v1 = vectors.[4 * i + 1]
            let v2 = vectors.[4 * i + 2]
            let v3 = vectors.[4 * i + 3]
            a0 <- a0 + (v0 - v0)
            a1 <- a1 + (v1 - v1)
            a2 <- a2 + (v2 - v2)
            a3 <- a3 + (v3 - v3)
        for i in 4 * quads .. vectors.Length - 1 do
            let v = vectors.[i]
            a0 <- a0 + (v - v)
        let mutable ok = System.Numerics.Vector.EqualsAll((a0 + a1) + (a2 + a3), System.Numerics.Vector<'T>.Zero)
        let mutable i = vectors.Length * System.Numerics.Vector<'T>.Count
        while ok && i < values.Length do
            ok <- isFinite values.[i]
            i <- i + 1
        ok

    // The tails' element checks, made once (a method group passed inline would allocate a closure per call).
    let private isFinite32: float32 -> bool = fun v -> Single.IsFinite v
    let private isFinite64: float -> bool = fun v -> Double.IsFinite v

    /// Whether every element of t is finite. A contiguous float32 or float64 CPU tensor is read
    /// straight from its memory in one vectorised pass (no tensor, no allocation); anything else goes
    /// through libtorch's isfinite and all.
    let allFinite (t: Tensor) : bool =
        if t.device_type = DeviceType.CPU && t.is_contiguous () && t.dtype = torch.float32 then
            finiteIn (System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float32>(t.bytes)) isFinite32
        elif t.device_type = DeviceType.CPU && t.is_contiguous () && t.dtype = torch.float64 then
            finiteIn (System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.bytes)) isFinite64
        else
            use d = t.detach ()
            use f = torch.isfinite (d)
            use all = f.all ()
            all.item<bool>()

    /// True when all elements of the host array are equal.
    let allEqual (values: float[]) = values.Length > 0 && values |> Array.forall (fun v -> v = values.[0])
