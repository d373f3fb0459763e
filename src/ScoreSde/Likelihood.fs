namespace ScoreSde

open System
open TorchSharp

/// Distribution of the Hutchinson probe vectors v (E[v v^T] = I for both).
[<RequireQualifiedAccess>]
type Probe =
    /// Entries +1 or -1 with probability 1/2 (the lower-variance choice).
    | Rademacher
    /// Standard normal entries.
    | Gaussian

/// How the divergence of the probability-flow drift (the trace of its Jacobian) is computed.
[<RequireQualifiedAccess>]
type Divergence =
    /// The exact trace: one backward pass per dimension (feasible for small dimensions).
    | Exact
    /// Hutchinson's estimate v^T J v averaged over `probes` vectors per sample, one backward pass per
    /// probe. The probes are drawn once per solve (fixed along the ODE), from the caller's noise.
    | Hutchinson of probe: Probe * probes: int

/// Settings of the likelihood computation.
type LikelihoodSettings =
    {
        /// ODE method for the augmented state [x, delta log p] (adaptive, or fixed-step).
        Method: OdeMethod
        /// Its schedule: integration starts at the end time (the data are taken as x(Eps); 1e-5 by
        /// default) and runs up to T, on the grid when the method has fixed steps.
        Schedule: Schedule
        Divergence: Divergence
        /// Added to the bits per dimension: log2 of the dequantisation bin count (e.g. 7 for 8-bit data
        /// scaled to [-1, 1]), 0 for continuous data.
        DequantizationOffset: float
    }

/// Log-likelihoods of a batch and what it took to compute them.
type LikelihoodResult =
    {
        /// log p(x) per sample, in nats ([B], x's dtype).
        LogLikelihood: Tensor
        /// -log p(x) / (D ln 2) + DequantizationOffset per sample ([B]).
        BitsPerDim: Tensor
        /// The latent x(T) the ODE maps each sample to (shaped like x).
        Latent: Tensor
        /// Model evaluations (each one batched; the backward passes of the divergence are not counted).
        Nfe: int
    }

    interface IDisposable with
        member r.Dispose() =
            r.LogLikelihood.Dispose()
            r.BitsPerDim.Dispose()
            r.Latent.Dispose()

/// Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, appendix D.2):
/// log p_0(x) = log p_T(x(T)) + integral_eps^T div f~(x(t), t) dt, with the augmented state
/// [x, delta log p] integrated from eps up to T.
[<RequireQualifiedAccess>]
module Likelihood =
    /// Dormand-Prince 5(4) at rtol = atol = 1e-5 with per-sample step control (a sample's
    /// log-likelihood does not depend on its batch-mates), exact divergence, eps = 1e-5, no
    /// dequantisation offset.
    let defaults =
        { Method = OdeMethod.Dopri5 AdaptiveOde.defaults
          Schedule = Schedule.uniform 100 1e-5
          Divergence = Divergence.Exact
          DequantizationOffset = 0.0 }

    /// Check the settings (throws ArgumentException naming the bad one).
    let validate (sde: Sde) (s: LikelihoodSettings) =
        OdeMethod.validate sde s.Method s.Schedule
        Check.finite "dequantizationOffset" s.DequantizationOffset
        match s.Divergence with
        | Divergence.Hutchinson(_, probes) -> Check.positiveInt "probes" probes
        | Divergence.Exact -> ()

    /// Probe vectors [B, K, D] for a batch of B samples of D elements: K per sample, from `noise`
    /// (dimension 0 is the batch, so per-sample noise sources give batch-size-independent probes).
    let probes
        (probe: Probe)
        (count: int)
        (noise: Noise)
        (batch: int64)
        (dim: int64)
        (dtype: torch.ScalarType)
        (device: torch.Device)
        : Tensor =
        Check.positiveInt "probes" count
        let z = Noise.draw noise [| batch; int64 count; dim |] dtype device
        match probe with
        | Probe.Gaussian -> z
        | Probe.Rademacher ->
            // Scalars bound with `use` stay alive through the native calls (they have finalizers)
            use scZero = Tensors.scalar 0.0
            use scOne = Tensors.scalar 1.0
            use s = z.sign ()
            use zero = s.eq (scZero)
            z.Dispose()
            s.masked_fill (zero, scOne)

    /// The probability-flow drift at (x, t) and its divergence per sample ([B]), both detached.
    /// `probes` is [B, K, D] for Hutchinson (None for the exact trace). Enables gradients around the
    /// model call, whatever the caller's mode.
    let driftAndDivergence (sde: Sde) (model: Model) (probes: Tensor option) (x: Tensor) (t: Tensor) : Tensor * Tensor =
        use scope = torch.NewDisposeScope()
        use _grad = torch.enable_grad (true)
        let batch = x.shape.[0]
        let dim = x.numel () / batch
        let xg = x.detach().requires_grad_(true)
        let out = Model.eval model xg t
        if not out.requires_grad then
            raise (
                InvalidOperationException(
                    "The model's output does not depend on x through autograd (requires_grad is false), so its divergence cannot be computed. The likelihood needs a differentiable model; do not detach or run it under no_grad."
                )
            )
        // F = p x + q out(x) with p and q independent of x (`ProbabilityFlow.coefficients`), so
        // v^T dF/dx = p v + (q v)^T d out/dx: each vector-Jacobian product is one backward pass through
        // the model alone, and F is formed without recording its operations. These are the products and
        // the sum autograd forms through F (the same values, for a model that reads x once; otherwise
        // the same terms summed in another order), with fewer operations per evaluation.
        let p, q = ProbabilityFlow.coefficients sde model.Output (Tensors.broadcastTime "t" t x)
        let f =
            use _noGrad = torch.no_grad ()
            ProbabilityFlow.ofCoefficients p q x out
        let vjp (v: Tensor) =
            let g = torch.autograd.grad ([| out |], [| xg |], [| v.mul (q) |], retain_graph = true, allow_unused = true)
            let pv = v.mul (p)
            // an output that does not depend on x (only on parameters) has no path to x: its part is 0
            let vjp = if g.[0].IsInvalid then pv else Tensors.addInPlace pv g.[0]
            vjp.reshape ([| batch; dim |])
        let div =
            match probes with
            | None ->
                // trace of J: sum_i (e_i^T J)_i, one vector-Jacobian product per dimension
                use one = Tensors.scalar 1.0
                use zero = Tensors.scalar 0.0
                let acc = torch.zeros ([| batch |], dtype = x.dtype, device = x.device)
                let e = torch.zeros ([| batch; dim |], dtype = x.dtype, device = x.device)
                for i in 0L .. dim - 1L do
                    use inner = torch.NewDisposeScope()
                    use col = e.select (1L, i)
                    col.fill_ (one) |> ignore
                    let row = vjp (e.reshape (x.shape))
                    use entry = row.select (1L, i)
                    acc.add_ (entry, one) |> ignore
                    col.fill_ (zero) |> ignore
                acc
            | Some p ->
                let k = p.shape.[1]
                let acc = torch.zeros ([| batch |], dtype = x.dtype, device = x.device)
                for j in 0L .. k - 1L do
                    use inner = torch.NewDisposeScope()
                    let v = p.select (1L, j)
                    let vj = vjp (v.reshape (x.shape))
                    Tensors.addInPlace acc ((vj * v).sum(1L)) |> ignore
                use sk = Tensors.scalar (float k)
                acc.div (sk)
        f.detach().MoveToOuterDisposeScope(), div.detach().MoveToOuterDisposeScope()

    /// log p(x) per sample for data x [B, ...] (not modified). Hutchinson probes come from `noise`
    /// (unused for the exact divergence). The model must be differentiable in x.
    let compute (sde: Sde) (model: Model) (settings: LikelihoodSettings) (noise: Noise) (x: Tensor) : LikelihoodResult =
        Native.ensureLoaded ()
        Sde.validate sde
        validate sde settings
        Check.floating "x" x
        if x.dim () < 1L || x.shape.[0] < 1L then
            Check.fail "x" x.shape "a tensor with a batch dimension"
        let batch = x.shape.[0]
        let dim = x.numel () / batch
        let shape = x.shape
        use _noGrad = torch.no_grad ()
        use probeTensor =
            match settings.Divergence with
            | Divergence.Exact -> null
            | Divergence.Hutchinson(p, k) -> probes p k noise batch dim x.dtype x.device
        let probeOpt = if isNull probeTensor then None else Some probeTensor
        // augmented state [B, D + 1] = [x flattened, delta log p]
        let augmented: TimeField =
            fun z t ->
                use scope = torch.NewDisposeScope()
                let xs = z.narrow(1L, 0L, dim).reshape(shape)
                let f, div = driftAndDivergence sde model probeOpt xs t
                torch.cat([| f.reshape ([| batch; dim |]); div.unsqueeze (1L) |], 1L).MoveToOuterDisposeScope()
        use z0 =
            use detached = x.detach ()
            use flat = detached.reshape ([| batch; dim |])
            use zero = torch.zeros ([| batch; 1L |], dtype = x.dtype, device = x.device)
            torch.cat ([| flat; zero |], 1L)
        let zT, nfe = OdeMethod.integrate sde settings.Method settings.Schedule augmented z0 false
        use _zT = zT
        // the results are made in a scope and moved out together, so an exception leaves none behind
        use scope = torch.NewDisposeScope()
        let latent = zT.narrow(1L, 0L, dim).reshape(shape).clone()
        let logp = Tensors.addInPlace (Sde.priorLogp sde latent) (zT.select (1L, dim))
        let bpd = Tensors.affine logp (-1.0 / (float dim * Math.Log 2.0)) settings.DequantizationOffset
        { LogLikelihood = logp.MoveToOuterDisposeScope()
          BitsPerDim = bpd.MoveToOuterDisposeScope()
          Latent = latent.MoveToOuterDisposeScope()
          Nfe = nfe }
