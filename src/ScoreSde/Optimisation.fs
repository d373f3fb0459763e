namespace ScoreSde

open System
open TorchSharp
open TorchSharp.Modules

/// Adam (Kingma & Ba 2015) with bias correction, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8, on the
/// parameters' own buffers: for each parameter with a gradient g, m <- beta1 m + (1 - beta1) g,
/// v <- beta2 v + (1 - beta2) g^2, p <- p - lr / (1 - beta1^k) m / (sqrt(v / (1 - beta2^k)) + eps).
/// Written here rather than TorchSharp's optimizer so that every Scalar is bound for the duration of
/// its native call (TorchSharp Scalars have finalizers, and one passed inline can be collected while
/// the call still reads it). Dispose it to free the moment buffers.
type Adam(parameters: Parameter[]) =
    do Check.notNull "parameters" parameters
    let m = parameters |> Array.map (fun p -> torch.zeros_like (p))
    let v = parameters |> Array.map (fun p -> torch.zeros_like (p))
    let mutable step = 0

    /// Steps taken so far.
    member _.Steps = step

    /// The moment buffers (first moments of every parameter, then the second moments), owned by this
    /// optimiser: what a checkpoint saves beside `Steps`.
    member _.Moments = Array.append m v

    /// Continue from a checkpoint: the step count and the moments (copied in, in `Moments`' order).
    member _.Restore(steps: int, moments: Tensor[]) =
        Check.nonNegativeInt "steps" steps
        Check.notNull "moments" moments
        let mine = Array.append m v
        if moments.Length <> mine.Length then
            Check.fail
                "moments"
                moments.Length
                (sprintf "%d tensors (first and second moments of %d parameters)" mine.Length parameters.Length)
        use _noGrad = torch.no_grad ()
        for target, source in Array.zip mine moments do
            Check.sameShape "moments" source target "the parameter"
            target.copy_ (source) |> ignore
        step <- steps

    /// One update with learning rate `lr` (parameters without a gradient are left alone).
    member _.Step(lr: float) =
        step <- step + 1
        let b1, b2, eps = 0.9, 0.999, 1e-8
        let c1 = 1.0 - Math.Pow(b1, float step)
        let c2 = 1.0 - Math.Pow(b2, float step)
        use sB1 = Tensors.scalar b1
        use sB2 = Tensors.scalar b2
        use s1mB1 = Tensors.scalar (1.0 - b1)
        use s1mB2 = Tensors.scalar (1.0 - b2)
        use sSqrtC2 = Tensors.scalar (Math.Sqrt c2)
        use sEps = Tensors.scalar eps
        use one = Tensors.scalar 1.0
        use sStep = Tensors.scalar (-lr / c1)
        use _noGrad = torch.no_grad ()
        for i in 0 .. parameters.Length - 1 do
            use g = parameters.[i].grad
            if not (isNull g) then
                m.[i].mul_(sB1).add_(g, s1mB1) |> ignore
                v.[i].mul_(sB2).addcmul_(g, g, s1mB2) |> ignore
                use denom = v.[i].sqrt()
                denom.div_(sSqrtC2).add_(sEps, one) |> ignore
                parameters.[i].addcdiv_(m.[i], denom, sStep) |> ignore

    interface IDisposable with
        member _.Dispose() =
            for t in Array.append m v do
                t.Dispose()

/// Gradient housekeeping of a training step.
[<RequireQualifiedAccess>]
module Gradients =
    /// Zero the gradients (those that exist).
    let zero (parameters: Parameter[]) =
        for p in parameters do
            use g = p.grad
            if not (isNull g) then
                g.zero_ () |> ignore

    /// Scale the gradients so that their global L2 norm is at most maxNorm (one host read per step).
    let clipNorm (parameters: Parameter[]) (maxNorm: float) =
        use scope = torch.NewDisposeScope()
        let grads = parameters |> Array.map (fun p -> p.grad) |> Array.filter (fun g -> not (isNull g))
        if grads.Length > 0 then
            let total = torch.stack(grads |> Array.map (fun g -> (Tensors.square g).sum()), 0L).sum().sqrt()
            let norm = total.to_type(torch.float64).item<float>()
            let factor = maxNorm / (norm + 1e-6)
            if factor < 1.0 then
                use sFactor = Tensors.scalar factor
                for g in grads do
                    g.mul_ (sFactor) |> ignore

/// The exponential moving average of the weights.
[<RequireQualifiedAccess>]
module Ema =
    /// The decay used at step k (0-based): min(maxDecay, (1 + k) / (10 + k)), so that short runs are not
    /// dominated by the initial weights.
    let decayAt (maxDecay: float) (k: int) = min maxDecay (float (1 + k) / float (10 + k))

    /// ema <- decay ema + (1 - decay) p, parameter by parameter (in place, no gradient).
    let update (ema: Parameter[]) (parameters: Parameter[]) (decay: float) =
        use sDecay = Tensors.scalar decay
        use sRest = Tensors.scalar (1.0 - decay)
        use _noGrad = torch.no_grad ()
        for e, p in Array.zip ema parameters do
            e.mul_(sDecay).add_(p, sRest) |> ignore
