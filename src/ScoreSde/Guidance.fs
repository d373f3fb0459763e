namespace ScoreSde

open System
open TorchSharp

/// A class-conditional model: `Forward x t labels`, labels an int64 tensor with one label per sample
/// (or one for the whole batch); `NullLabel` is the label meaning "no class" (the unconditional model
/// that classifier-free guidance needs, trained by dropping labels). It must not modify its inputs.
type ConditionalModel = { Forward: Tensor -> Tensor -> Tensor -> Tensor; Output: ModelOutput; NullLabel: int64 }

/// How classifier-free guidance evaluates its conditional and unconditional predictions.
[<RequireQualifiedAccess>]
type GuidanceEvaluation =
    /// One call on a batch of 2B: [x; x] with [labels; null labels].
    | Batched
    /// Two calls on the batch of B: one with the labels, one with the null label.
    | Separate

/// Guidance as transformations of a model (a model in, a model out), so that every sampler and SDE
/// takes a guided model as any other.
[<RequireQualifiedAccess>]
module Guidance =
    let private checkLabels (labels: Tensor) =
        Check.notNull "labels" labels
        if labels.dtype <> torch.int64 || labels.dim () > 1L || labels.numel () < 1L then
            Check.fail "labels" (labels.dtype, labels.shape) "an int64 tensor of one label or one label per sample"

    /// The labels for a batch of b on a device: one per sample.
    let private labelsFor (labels: Tensor) (b: int64) (device: torch.Device) : Tensor =
        if labels.numel () <> 1L && labels.numel () <> b then
            Check.fail "labels" labels.shape (sprintf "one label or one per sample (%d)" b)
        use flat = labels.reshape ([| -1L |])
        use expanded = flat.expand ([| b |])
        expanded.``to`` (device)

    /// The conditional model at (x, t, labels), its output's shape checked as any model's (`Model.eval`).
    let private evalConditional (model: ConditionalModel) (x: Tensor) (t: Tensor) (labels: Tensor) =
        Model.eval { Forward = (fun x t -> model.Forward x t labels); Output = model.Output } x t

    /// The conditional model for fixed labels (one per sample, or one for the batch), as a `Model`.
    /// The labels are the caller's: not copied, so they must stay alive and unchanged while it is used.
    let conditional (model: ConditionalModel) (labels: Tensor) : Model =
        checkLabels labels
        { Forward =
            fun x t ->
                use l = labelsFor labels x.shape.[0] x.device
                evalConditional model x t l
          Output = model.Output }

    /// Classifier-free guidance (Ho & Salimans 2022): (1 + w) m(x, t, y) - w m(x, t, null) for the
    /// labels y, w >= 0 the guidance weight (w = 0: the conditional model itself, evaluated once). The
    /// combination is affine with weights summing to one, so it means the same for noise, score and
    /// data predictions. `evaluation` chooses one call on 2B samples or two calls on B.
    let classifierFreeWith (evaluation: GuidanceEvaluation) (model: ConditionalModel) (labels: Tensor) (w: float) : Model =
        checkLabels labels
        Check.finite "w" w
        if w < 0.0 then
            Check.fail "w" w "zero or more"
        if w = 0.0 then
            conditional model labels
        else
            let forward (x: Tensor) (t: Tensor) =
                use scope = torch.NewDisposeScope()
                let b = x.shape.[0]
                let l = labelsFor labels b x.device
                use nullValue = Scalar.op_Implicit model.NullLabel
                let nulls = torch.full ([| b |], nullValue, dtype = torch.int64, device = x.device)
                let c, u =
                    match evaluation with
                    | GuidanceEvaluation.Separate -> evalConditional model x t l, evalConditional model x t nulls
                    | GuidanceEvaluation.Batched ->
                        let x2 = torch.cat ([| x; x |], 0L)
                        let t2 = if t.numel () = 1L then t else torch.cat ([| t.reshape ([| -1L |]); t.reshape ([| -1L |]) |], 0L)
                        let out = evalConditional model x2 t2 (torch.cat ([| l; nulls |], 0L))
                        out.narrow (0L, 0L, b), out.narrow (0L, b, b)
                use wc = Tensors.scalar (1.0 + w)
                use wu = Tensors.scalar -w
                let r = c.mul (wc)
                r.add_ (u, wu) |> ignore
                r.MoveToOuterDisposeScope()
            { Forward = forward; Output = model.Output }

    /// Classifier-free guidance with one batched call of 2B samples (measured faster than two calls of B
    /// on the benchmark's models; see docs/conditional.md).
    let classifierFree (model: ConditionalModel) (labels: Tensor) (w: float) : Model =
        classifierFreeWith GuidanceEvaluation.Batched model labels w

    /// grad_x of sum_i log softmax(classifier(x, t))_(i, y_i), by autograd with gradients enabled around
    /// this call only (the samplers run without them).
    let private classifierGradient (classifier: Tensor -> Tensor -> Tensor) (x: Tensor) (t: Tensor) (labels: Tensor) : Tensor =
        use _grad = torch.enable_grad ()
        use xg = x.detach ()
        xg.requires_grad_ (true) |> ignore
        // created within the caller's dispose scope, which disposes it
        let logits = classifier xg t
        if isNull logits || logits.dim () <> 2L || logits.shape.[0] <> x.shape.[0] then
            raise (
                InvalidOperationException(
                    sprintf
                        "The classifier returned shape %s for a batch of %d; it must return [batch, classes] logits or log-probabilities."
                        (if isNull logits then "null" else Check.shapeText logits.shape)
                        x.shape.[0]
                )
            )
        let classes = logits.shape.[1]
        use lmax = labels.max ()
        use lmin = labels.min ()
        if lmin.item<int64>() < 0L || lmax.item<int64>() >= classes then
            Check.fail
                "labels"
                (lmin.item<int64>(), lmax.item<int64>())
                (sprintf "labels in 0 .. %d (the classifier's classes)" (classes - 1L))
        use logp = torch.nn.functional.log_softmax (logits, 1L)
        use index = labels.unsqueeze (1L)
        use picked = logp.gather (1L, index)
        use total = picked.sum ()
        let grads = torch.autograd.grad ([| total |], [| xg |], allow_unused = true)
        let g = grads.[0]
        if isNull g then
            raise (InvalidOperationException "The classifier's output does not depend on x: there is no gradient to guide with.")
        g

    /// Classifier guidance (Song et al. 2021, Sec. 5; Dhariwal & Nichol 2021): the score plus `scale`
    /// times grad_x log p(y | x, t) of a time-dependent classifier, for the labels y (one per sample or
    /// one for the batch). The classifier maps (x, t) to [B, classes] logits or log-probabilities of
    /// each class for the noisy x at time t (t as the samplers pass it, one time per sample), and must be
    /// differentiable in x. The guided model has the model's output kind: the gradient is converted to
    /// it (noise: -sigma_t scale grad; data: sigma_t^2 / alpha_t scale grad). The classifier's gradient
    /// comes from autograd with gradients enabled around its call only. Scale 1 with the exact
    /// classifier gives the exact class-conditional score.
    let classifier (sde: Sde) (model: Model) (classifier: Tensor -> Tensor -> Tensor) (labels: Tensor) (scale: float) : Model =
        Sde.validate sde
        checkLabels labels
        Check.finite "scale" scale
        let forward (x: Tensor) (t: Tensor) =
            use scope = torch.NewDisposeScope()
            let out = Model.eval model x t
            let l = labelsFor labels x.shape.[0] x.device
            let g = classifierGradient classifier x t l
            let g = if g.dtype = out.dtype then g else g.to_type (out.dtype)
            // score = ka x + kb out, so adding scale g to the score adds (scale / kb) g to the output
            let ts = Tensors.readHost t
            let r = out.clone ()
            if Tensors.allEqual ts then
                let _, kb = Model.scoreCoefficientsAt sde model.Output ts.[0]
                Kernel.addScaled r g (scale / kb)
            else
                let _, kb = Model.scoreCoefficients sde model.Output (Tensors.broadcastTime "t" t x)
                Kernel.addProduct r g (kb.reciprocal ()) scale
            r.MoveToOuterDisposeScope()
        { Forward = forward; Output = model.Output }
