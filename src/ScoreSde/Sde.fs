namespace ScoreSde

open System
open TorchSharp

/// The variance-preserving SDE of Song et al. (2021) with a linear noise schedule:
/// beta(t) = BetaMin + t (BetaMax - BetaMin) on t in [0, T], T = 1.
/// Create values with `VpSde.create`, which validates the parameters.
type VpSde =
    {
        BetaMin: float
        BetaMax: float
        /// End time of the diffusion (1 for the paper's VP-SDE).
        T: float
    }

/// The DDPM discretisation of the VP-SDE with N steps (the paper code's convention).
type DdpmDiscretisation =
    {
        /// beta_i = linspace(BetaMin / N, BetaMax / N, N).
        Betas: float[]
        /// alpha_i = 1 - beta_i.
        Alphas: float[]
    }

/// Functions of the VP-SDE. Host versions (suffix `At`) take a time as a float; tensor versions take
/// a time tensor that is 0-d or holds one value per batch element, broadcast over x's trailing dims.
[<RequireQualifiedAccess>]
module VpSde =
    /// A validated VP-SDE: BetaMin > 0, BetaMax >= BetaMin, both finite.
    let create (betaMin: float) (betaMax: float) : VpSde =
        Check.positive "betaMin" betaMin
        Check.finite "betaMax" betaMax
        if betaMax < betaMin then
            Check.fail "betaMax" betaMax (sprintf "at least betaMin (%g)" betaMin)
        { BetaMin = betaMin; BetaMax = betaMax; T = 1.0 }

    /// The paper's defaults: beta from 0.1 to 20.
    let standard = { BetaMin = 0.1; BetaMax = 20.0; T = 1.0 }

    // ---- host (float) versions: used for per-step scalars computed once on the host ----

    /// beta(t).
    let betaAt (sde: VpSde) (t: float) = sde.BetaMin + t * (sde.BetaMax - sde.BetaMin)

    /// Integral of beta from 0 to t: BetaMin t + (BetaMax - BetaMin) t^2 / 2.
    let integratedBetaAt (sde: VpSde) (t: float) = sde.BetaMin * t + 0.5 * (sde.BetaMax - sde.BetaMin) * t * t

    /// Log mean coefficient m(t) = -1/4 t^2 (BetaMax - BetaMin) - 1/2 t BetaMin = log alpha_t.
    let logMeanCoeffAt (sde: VpSde) (t: float) = -0.5 * integratedBetaAt sde t

    /// alpha_t = exp(m(t)), the marginal mean coefficient.
    let alphaAt (sde: VpSde) (t: float) = Math.Exp(logMeanCoeffAt sde t)

    /// sigma_t^2 = 1 - alpha_t^2, computed as -expm1(2 m(t)).
    let varianceAt (sde: VpSde) (t: float) = -(HostMath.expm1 (2.0 * logMeanCoeffAt sde t))

    /// sigma_t = sqrt(-expm1(2 m(t))), the marginal standard deviation.
    let sigmaAt (sde: VpSde) (t: float) = Math.Sqrt(varianceAt sde t)

    /// Half log-SNR lambda_t = log alpha_t - log sigma_t (strictly decreasing in t).
    let lambdaAt (sde: VpSde) (t: float) = logMeanCoeffAt sde t - 0.5 * Math.Log(varianceAt sde t)

    /// Inverse of `lambdaAt` for the linear schedule:
    /// with L = log(1 + exp(-2 lambda)), t = 2 L / (sqrt(BetaMin^2 + 2 (BetaMax - BetaMin) L) + BetaMin).
    let timeOfLambda (sde: VpSde) (lambda: float) =
        // L = log1p(exp(-2 lambda)), stable for both signs of lambda.
        let a = -2.0 * lambda
        let l = if a > 0.0 then a + HostMath.log1p (Math.Exp(-a)) else HostMath.log1p (Math.Exp a)
        let d = sde.BetaMax - sde.BetaMin
        2.0 * l / (Math.Sqrt(sde.BetaMin * sde.BetaMin + 2.0 * d * l) + sde.BetaMin)

    /// The DDPM beta of the interval [s, t] (s < t): 1 - alpha_t^2 / alpha_s^2, in (0, 1) for any
    /// s < t. This is how the discrete predictors stay well defined on any time grid.
    let intervalBeta (sde: VpSde) (t: float) (s: float) = -(HostMath.expm1 (2.0 * (logMeanCoeffAt sde t - logMeanCoeffAt sde s)))

    /// The paper code's DDPM discretisation with N steps. Rejects N for which beta_i = BetaMax / N
    /// reaches 1 (sqrt(1 - beta_i) would be NaN): with the default BetaMax = 20 that is N <= 20.
    let discretise (sde: VpSde) (n: int) : DdpmDiscretisation =
        Check.positiveInt "n" n
        let bmax = sde.BetaMax / float n
        if bmax >= 1.0 then
            Check.fail "n" n (sprintf "greater than BetaMax (%g) so that every beta_i = beta/N stays below 1" sde.BetaMax)
        let betas =
            Array.init n (fun i ->
                let f = if n = 1 then 0.0 else float i / float (n - 1)
                (sde.BetaMin + f * (sde.BetaMax - sde.BetaMin)) / float n)
        { Betas = betas; Alphas = betas |> Array.map (fun b -> 1.0 - b) }

    /// Index of time t in an N-step DDPM discretisation: floor(t (N - 1) / T).
    let ddpmIndex (sde: VpSde) (n: int) (t: float) =
        let i = int (Math.Floor(t * float (n - 1) / sde.T))
        max 0 (min (n - 1) i)

    // ---- tensor versions ----

    /// beta(t) for a time tensor.
    let beta (sde: VpSde) (t: Tensor) : Tensor = Tensors.affine t (sde.BetaMax - sde.BetaMin) sde.BetaMin

    /// m(t) = log alpha_t for a time tensor.
    let logMeanCoeff (sde: VpSde) (t: Tensor) : Tensor =
        // m = t (-1/4 (BetaMax - BetaMin) t - 1/2 BetaMin)
        use inner = Tensors.affine t (-0.25 * (sde.BetaMax - sde.BetaMin)) (-0.5 * sde.BetaMin)
        t * inner

    /// alpha_t for a time tensor.
    let alpha (sde: VpSde) (t: Tensor) : Tensor =
        use m = logMeanCoeff sde t
        m.exp ()

    /// sigma_t = sqrt(-expm1(2 m(t))) for a time tensor.
    let sigma (sde: VpSde) (t: Tensor) : Tensor =
        use m = logMeanCoeff sde t
        use m2 = Tensors.mulScalar m 2.0
        use e = torch.expm1 m2
        use v = e.neg ()
        v.sqrt ()

    /// Half log-SNR lambda_t for a time tensor.
    let lambda (sde: VpSde) (t: Tensor) : Tensor =
        use m = logMeanCoeff sde t
        use m2 = Tensors.mulScalar m 2.0
        use e = torch.expm1 m2
        use v = e.neg ()
        use lv = v.log ()
        use h = Tensors.mulScalar lv 0.5
        m - h

    /// Forward drift f(x, t) = -1/2 beta(t) x.
    let drift (sde: VpSde) (x: Tensor) (t: Tensor) : Tensor =
        use tb = Tensors.broadcastTime "t" t x
        use b = beta sde tb
        use hb = Tensors.mulScalar b -0.5
        hb * x

    /// Diffusion coefficient g(t) = sqrt(beta(t)).
    let diffusion (sde: VpSde) (t: Tensor) : Tensor =
        use b = beta sde t
        b.sqrt ()

    /// Marginal of x_t given x_0: mean alpha_t x_0 and standard deviation sigma_t (broadcast over
    /// x_0's trailing dims).
    let marginal (sde: VpSde) (x0: Tensor) (t: Tensor) : Tensor * Tensor =
        use tb = Tensors.broadcastTime "t" t x0
        use a = alpha sde tb
        a * x0, sigma sde tb

    /// x_t = alpha_t x_0 + sigma_t z.
    let perturb (sde: VpSde) (x0: Tensor) (t: Tensor) (z: Tensor) : Tensor =
        Check.sameShape "z" z x0 "x0"
        use tb = Tensors.broadcastTime "t" t x0
        use a = alpha sde tb
        use s = sigma sde tb
        use ax = a * x0
        use sz = s * z
        ax + sz

    /// Log-density of the prior N(0, I) per sample: -D/2 log(2 pi) - |z|^2 / 2 (D = elements per sample).
    let priorLogp (z: Tensor) : Tensor =
        let d = if z.dim () <= 1L then z.numel () else z.numel () / z.shape.[0]
        use flat = if z.dim () <= 1L then z.reshape ([| 1L; -1L |]) else z.reshape ([| z.shape.[0]; -1L |])
        use sq = flat.square ()
        use s = sq.sum (1L)
        Tensors.affine s -0.5 (-0.5 * float d * Math.Log(2.0 * Math.PI))

    /// Reverse-time SDE drift f - g^2 s, given the score at (x, t).
    let reverseDrift (sde: VpSde) (score: Tensor) (x: Tensor) (t: Tensor) : Tensor =
        use tb = Tensors.broadcastTime "t" t x
        use b = beta sde tb
        use hb = Tensors.mulScalar b -0.5
        use f = hb * x
        use gs = b * score
        f - gs

    /// Probability-flow ODE drift f - 1/2 g^2 s = -1/2 beta(t) (x + s), given the score at (x, t).
    let probabilityFlowDrift (sde: VpSde) (score: Tensor) (x: Tensor) (t: Tensor) : Tensor =
        use tb = Tensors.broadcastTime "t" t x
        use b = beta sde tb
        use hb = Tensors.mulScalar b -0.5
        use xs = x + score
        hb * xs
