/// Exact conditionals of the Gaussian mixtures (isotropic components), computed here in float64 from
/// the mixture's parameters, independently of the library: given known coordinates in an orthonormal
/// basis, the unknown ones follow the mixture with components reweighted by their likelihood of the
/// known values; given a class (a component) the law is that component; p(class | x_t) in closed form
/// (the class-conditional marginals at t); and a class-conditional noise prediction with a null label.
/// Compiled into the quality benchmark and the test suite.
module ScoreSde.Quality.Conditional

open System
open TorchSharp
open ScoreSde
open ScoreSde.Quality.Mixture

/// Each component's one standard deviation (the benchmark's components are isotropic; an orthonormal
/// change of basis keeps them so).
let private isotropicStds (m: Mixture) =
    m.Stds
    |> Array.map (fun s ->
        if s |> Array.exists (fun v -> v <> s.[0]) then
            invalidArg "m" "the exact conditionals here need isotropic components"
        s.[0])

/// The component means in the basis, U m_k, as [K, D] (float64).
let private meansIn (m: Mixture) (basis: Tensor option) =
    use means = torch.tensor(Array.concat m.Means, dtype = torch.float64).reshape([| int64 m.Modes; int64 m.Dim |])
    match basis with
    | None -> means.clone ()
    | Some u ->
        use u64 = u.to_type (torch.float64)
        means.matmul (u64.t ())

/// log P(k | known coordinates y) for each row of y ([N, D] in the basis; `known`: the known coordinate
/// indices), as [N, K].
let logPosterior (m: Mixture) (basis: Tensor option) (known: int[]) (y: Tensor) : Tensor =
    use scope = torch.NewDisposeScope()
    let stds = isotropicStds m
    let mu = meansIn m basis
    let idx = torch.tensor (known |> Array.map int64)
    let muK = mu.index_select (1L, idx) // [K, |known|]
    let yK = y.to_type(torch.float64).index_select(1L, idx) // [N, |known|]
    let nK = float known.Length
    let logs =
        [| for k in 0 .. m.Modes - 1 ->
               let d = yK - muK.[int64 k].unsqueeze(0L)
               let quad = (d * d).sum(1L) / (stds.[k] * stds.[k])
               quad * -0.5 + (Math.Log m.Weights.[k] - nK * Math.Log stds.[k]) |]
    let l = torch.stack (logs, 1L)
    (l - l.logsumexp (1L, true)).MoveToOuterDisposeScope()

/// Exact conditional samples in data coordinates, one per row of y ([N, D], the known values in the
/// basis; entries off `known` are ignored): component k ~ P(k | y_i), the unknown coordinates (in the
/// basis) from N((U m_k)_u, s_k^2), the known ones y_i, then back to data coordinates by U^T.
let sampleGiven (m: Mixture) (basis: Tensor option) (known: int[]) (y: Tensor) (g: torch.Generator) : Tensor =
    use scope = torch.NewDisposeScope()
    let n = y.shape.[0]
    let probs = (logPosterior m basis known y).exp()
    let k = torch.multinomial(probs, 1L, true, g).squeeze(1L)
    let mu = meansIn m basis
    let stds = torch.tensor (isotropicStds m, dtype = torch.float64)
    let z = torch.randn ([| n; int64 m.Dim |], dtype = torch.float64, generator = g)
    let c = mu.index_select (0L, k) + stds.index_select(0L, k).unsqueeze(1L) * z
    let mask =
        torch
            .tensor(Array.init m.Dim (fun i -> if Array.contains i known then 1.0 else 0.0), dtype = torch.float64)
            .reshape([| 1L; int64 m.Dim |])
    let c = c * (1.0 - mask) + y.to_type (torch.float64) * mask
    let x =
        match basis with
        | None -> c
        | Some u -> c.matmul (u.to_type (torch.float64))
    x.MoveToOuterDisposeScope()

/// n exact samples of component k, [n, D] in float64.
let sampleComponent (m: Mixture) (k: int) (n: int) (g: torch.Generator) : Tensor =
    use scope = torch.NewDisposeScope()
    let mean = torch.tensor (m.Means.[k], dtype = torch.float64)
    let std = torch.tensor (m.Stds.[k], dtype = torch.float64)
    let z = torch.randn ([| int64 n; int64 m.Dim |], dtype = torch.float64, generator = g)
    (mean + std * z).MoveToOuterDisposeScope()

/// The exact time-dependent classifier: log p(k | x_t) for every component k, [B, K], differentiable
/// in x (float64 inside, returned in x's dtype): the class-conditional marginals at t are
/// N(alpha_t m_k, (alpha_t^2 s_k^2 + sigma_t^2) I), weighted by w_k and normalised. Called at every
/// sampler step, so its Scalars are bound for the native calls (see the guide).
let classifier (sde: Sde) (m: Mixture) : Tensor -> Tensor -> Tensor =
    let means, vars0, logW = parameters m
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        let a, s2 = marginal sde (sharedTime t)
        use sa = Scalar.op_Implicit a
        use sa2 = Scalar.op_Implicit (a * a)
        use ss2 = Scalar.op_Implicit s2
        use half = Scalar.op_Implicit -0.5
        use one = Scalar.op_Implicit 1.0
        let v = vars0.mul(sa2).add(ss2)
        let x64 = x.to_type(torch.float64).unsqueeze(1L) // [B, 1, D]
        let diff = x64.sub (means.mul(sa).unsqueeze(0L)) // [B, K, D]
        let quad = diff.mul(diff).div(v.unsqueeze (0L)).sum(2L)
        let logDet = v.log().sum(1L).unsqueeze(0L)
        let logJoint = quad.add(logDet, one).mul(half).add(logW, one)
        logJoint.sub(logJoint.logsumexp (1L, true)).to_type(x.dtype).MoveToOuterDisposeScope()

/// The exact class-conditional noise prediction eps(x, t, label): label k < K gives component k's
/// (a Gaussian: eps = -sigma_t (alpha_t m_k - x) / v_k), label K (the null label) the mixture's
/// (`Mixture.noiseModel`). Labels: an int64 tensor with one label per sample.
let conditionalNoise (sde: Sde) (m: Mixture) : Tensor -> Tensor -> Tensor -> Tensor =
    let k = int64 m.Modes
    let means, vars0, _ = parameters m
    let unconditional = noiseModel sde m
    fun (x: Tensor) (t: Tensor) (labels: Tensor) ->
        use scope = torch.NewDisposeScope()
        let a, s2 = marginal sde (sharedTime t)
        use sa = Scalar.op_Implicit a
        use sa2 = Scalar.op_Implicit (a * a)
        use ss2 = Scalar.op_Implicit s2
        use sigma = Scalar.op_Implicit (Math.Sqrt s2)
        let v = vars0.mul(sa2).add(ss2)
        let x64 = x.to_type (torch.float64)
        let l = labels.reshape([| -1L |]).expand([| x.shape.[0] |]).``to``(torch.int64)
        let isNull = l.eq (torch.tensor (k))
        let safe = torch.where (isNull, torch.zeros_like (l), l)
        let mean = means.mul(sa).index_select(0L, safe)
        let eps = x64.sub(mean).div(v.index_select (0L, safe)).mul(sigma)
        let u = (unconditional x t).to_type(torch.float64)
        torch.where(isNull.unsqueeze (1L), u, eps).to_type(x.dtype).MoveToOuterDisposeScope()
