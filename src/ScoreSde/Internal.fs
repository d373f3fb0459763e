namespace ScoreSde

open System
open TorchSharp

type Tensor = torch.Tensor

/// Argument checks shared by every module: each failure names the parameter and the value.
module internal Check =
    let inline fail (param: string) (value: obj) (requirement: string) : 'a =
        raise (ArgumentException(sprintf "%s must be %s (got %A)." param requirement value, param))

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

    let floating (param: string) (t: Tensor) =
        notNull param t
        if not (torch.is_floating_point t) then
            fail param t.dtype "a floating-point tensor (float32 or float64)"

    let shape (param: string) (shape: int64[]) =
        notNull param shape
        if shape.Length = 0 then
            fail param shape "a non-empty shape whose first entry is the batch size"
        if shape |> Array.exists (fun d -> d < 1L) then
            fail param shape "a shape of positive sizes"

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
                    sprintf "%s has shape %A but %s has shape %A; they must match." param t.shape referenceName reference.shape,
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
        t.add (s)

    /// a t + b (both host doubles) with the Scalars kept alive.
    let affine (t: Tensor) (a: float) (b: float) : Tensor =
        use sa = scalar a
        use sb = scalar b
        use ta = t.mul (sa)
        ta.add (sb)

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
                        "%s must hold one value or one value per batch element (%d); got %d elements (shape %A)."
                        param
                        (if x.dim () > 0L then x.shape.[0] else 1L)
                        (t.numel ())
                        t.shape,
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
        torch.full ([| batch |], scalar t, dtype = dtype, device = device)

    /// True when all elements of the host array are equal.
    let allEqual (values: float[]) = values.Length > 0 && values |> Array.forall (fun v -> v = values.[0])
