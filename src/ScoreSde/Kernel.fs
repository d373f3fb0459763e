namespace ScoreSde

open TorchSharp

/// One step of the result of a stochastic update: the new sample and its mean (the sample before the
/// step's noise was added).
type StepResult = { Sample: Tensor; Mean: Tensor }

/// In-place linear updates shared by predictors, correctors and the diffusers-compatible step. Each is
/// a few fused tensor operations with host-scalar coefficients; the TorchSharp Scalars they pass are
/// disposed at once (a Scalar holds a native handle, and leaving it to the finaliser costs GC work on
/// every call).
module internal Kernel =
    /// x <- x * a, in place.
    let scale (x: Tensor) (a: float) =
        use sa = Tensors.scalar a
        x.mul_ (sa) |> ignore

    /// x <- x + alpha y, in place (one pass).
    let addScaled (x: Tensor) (y: Tensor) (alpha: float) =
        use s = Tensors.scalar alpha
        x.add_ (y, s) |> ignore

    /// x <- x + value t1 t2 (element-wise, t2 broadcast), in place (one pass).
    let addProduct (x: Tensor) (t1: Tensor) (t2: Tensor) (value: float) =
        use s = Tensors.scalar value
        x.addcmul_ (t1, t2, s) |> ignore

    /// x <- a x + b out, in place. Safe when out is x itself (element-wise full alias).
    let axpby (x: Tensor) (a: float) (out: Tensor) (b: float) =
        if b = 0.0 then
            if a <> 1.0 then
                scale x a
        elif a = 0.0 then
            x.copy_ (out) |> ignore
            scale x b
        elif a = 1.0 then
            addScaled x out b
        elif not (Fused.tryLinear x a x b out 0.0 null) then
            addScaled x out (b / a)
            scale x a

    /// x <- a x + b y + c z, in place: one pass on CPU tensors (`Fused`), else up to three. y and z
    /// may be the same tensor, but neither may be x.
    let addTwo (x: Tensor) (a: float) (y: Tensor) (b: float) (z: Tensor) (c: float) =
        if not (Fused.tryLinear x a x b y c z) then
            if a <> 1.0 then
                scale x a
            addScaled x y b
            addScaled x z c

    /// x <- a x + b out + c z, in place, with z freshly filled from the noise source (the noise term
    /// is skipped when c = 0): one pass after the draw on CPU tensors (`Fused`), else axpby then an
    /// add. Safe when out is x itself.
    let axpbyNoise (x: Tensor) (a: float) (out: Tensor) (b: float) (z: Tensor) (c: float) (noise: Noise) =
        if c = 0.0 then
            axpby x a out b
        else
            noise.Fill z
            if a = 0.0 || b = 0.0 || not (Fused.tryLinear x a x b out c z) then
                axpby x a out b
                addScaled x z c

    /// x <- x + c z, in place, with z freshly filled from the noise source (no-op when c = 0).
    let addNoise (x: Tensor) (z: Tensor) (c: float) (noise: Noise) =
        if c <> 0.0 then
            noise.Fill z
            addScaled x z c

    /// A fresh tensor a x + b out in as few passes as the coefficients allow (one when a is 0 or 1 or
    /// b is 0, two otherwise: out scaled into the new tensor, then x added with a as alpha). Neither
    /// input is modified. No intermediate tensor is created.
    let combine (a: float) (x: Tensor) (b: float) (out: Tensor) : Tensor =
        if b = 0.0 then
            use sa = Tensors.scalar a
            x.mul (sa)
        elif a = 0.0 then
            use sb = Tensors.scalar b
            out.mul (sb)
        elif a = 1.0 then
            use sb = Tensors.scalar b
            x.add (out, sb)
        else
            let m =
                use sb = Tensors.scalar b
                out.mul (sb)
            addScaled m x a
            m

    /// The mean a x + b out and the sample mean + c z of a step as two fresh tensors. z is drawn
    /// straight into the sample tensor, a new contiguous tensor shaped like x (exactly one draw of that
    /// shape, as torch.randn(shape) would make); then one fused pass writes both results (`Fused`, CPU
    /// tensors it accepts, a and b nonzero), or else the mean is formed by `combine` and the sample is
    /// scaled and shifted in place. Neither input is modified.
    let meanAndSample (a: float) (x: Tensor) (b: float) (out: Tensor) (c: float) (noise: Noise) : StepResult =
        let sample =
            if x.is_contiguous () then
                torch.empty_like (x)
            else
                torch.empty (x.shape, dtype = x.dtype, device = x.device)
        let mutable mean: Tensor = null
        try
            noise.Fill sample
            // (the device test only spares a mean buffer the kernel would refuse; Fused decides the rest)
            if a <> 0.0 && b <> 0.0 && x.device_type = DeviceType.CPU then
                mean <- torch.empty_like (sample)
                if not (Fused.tryMeanAndSample mean sample a x b out c) then
                    mean.Dispose()
                    mean <- null
            if isNull mean then
                mean <- combine a x b out
                scale sample c
                Tensors.addInPlace sample mean |> ignore
            { Sample = sample; Mean = mean }
        with _ ->
            sample.Dispose()
            if not (isNull mean) then
                mean.Dispose()
            reraise ()
