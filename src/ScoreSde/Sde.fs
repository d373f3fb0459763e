namespace ScoreSde

open System
open TorchSharp

/// The three SDEs of Song et al. (2021), each linear in x: dx = f(t) x dt + g(t) dw on t in [0, T],
/// T = 1, with the marginal x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I).
/// - Vp: f = -beta/2, g^2 = beta; alpha = exp(m), sigma^2 = 1 - alpha^2 (m = log alpha).
/// - SubVp: the same drift and alpha; g^2 = beta (1 - alpha^4); sigma = 1 - alpha^2 (no square root).
/// - Ve: f = 0, sigma(t) = SigmaMin (SigmaMax / SigmaMin)^t, g^2 = d sigma^2 / dt; alpha = 1.
/// Make values with `Sde.vp`, `Sde.subVp` and `Sde.ve`, which validate the parameters.
[<RequireQualifiedAccess>]
type Sde =
    | Vp of VpSchedule
    | SubVp of VpSchedule
    | Ve of VeSchedule

    /// End time of the diffusion (1 for the three SDEs).
    member _.T = 1.0

/// Functions of an SDE. Host versions (suffix `At`) take a time as a float and compute in float64;
/// tensor versions take a time tensor (element-wise; `drift`, `marginal`, `perturb` and the reverse
/// drifts broadcast a 0-d or one-per-sample time over x's trailing dimensions). Each formula is
/// written once per SDE here and used by every sampler, solver and loss.
[<RequireQualifiedAccess>]
module Sde =
    /// A validated VP-SDE (BetaMin > 0, BetaMax >= BetaMin).
    let vp (betaMin: float) (betaMax: float) = Sde.Vp(VpSchedule.create betaMin betaMax)

    /// A validated sub-VP SDE (BetaMin > 0, BetaMax >= BetaMin).
    let subVp (betaMin: float) (betaMax: float) = Sde.SubVp(VpSchedule.create betaMin betaMax)

    /// A validated VE SDE (0 < SigmaMin < SigmaMax).
    let ve (sigmaMin: float) (sigmaMax: float) = Sde.Ve(VeSchedule.create sigmaMin sigmaMax)

    /// The paper's defaults: VP and sub-VP with beta from 0.1 to 20, VE with sigma from 0.01 to 50.
    let standardVp, standardSubVp, standardVe =
        Sde.Vp VpSchedule.standard, Sde.SubVp VpSchedule.standard, Sde.Ve VeSchedule.standard

    /// Check the parameters of a value made without the validating constructors.
    let validate (sde: Sde) =
        match sde with
        | Sde.Vp s
        | Sde.SubVp s -> VpSchedule.create s.BetaMin s.BetaMax |> ignore
        | Sde.Ve s -> VeSchedule.create s.SigmaMin s.SigmaMax |> ignore

    /// The short name used on the command line and in model files: "vp", "subvp" or "ve".
    let name (sde: Sde) =
        match sde with
        | Sde.Vp _ -> "vp"
        | Sde.SubVp _ -> "subvp"
        | Sde.Ve _ -> "ve"

    /// A human-readable description with the parameters.
    let describe (sde: Sde) =
        match sde with
        | Sde.Vp s -> sprintf "VP-SDE, beta %g..%g" s.BetaMin s.BetaMax
        | Sde.SubVp s -> sprintf "sub-VP SDE, beta %g..%g" s.BetaMin s.BetaMax
        | Sde.Ve s -> sprintf "VE-SDE, sigma %g..%g" s.SigmaMin s.SigmaMax

    // ---- host (float64) versions ----

    /// log alpha(t): m(t) for VP and sub-VP, 0 for VE.
    let logAlphaAt (sde: Sde) (t: float) =
        match sde with
        | Sde.Vp s
        | Sde.SubVp s -> VpSchedule.logMeanCoeffAt s t
        | Sde.Ve _ -> 0.0

    /// alpha(t), the marginal mean coefficient.
    let alphaAt (sde: Sde) (t: float) = Math.Exp(logAlphaAt sde t)

    /// log sigma(t), without cancellation near t = 0 (expm1).
    let logSigmaAt (sde: Sde) (t: float) =
        match sde with
        | Sde.Vp s -> 0.5 * Math.Log(-(HostMath.expm1 (2.0 * VpSchedule.logMeanCoeffAt s t)))
        | Sde.SubVp s -> Math.Log(-(HostMath.expm1 (2.0 * VpSchedule.logMeanCoeffAt s t)))
        | Sde.Ve s -> Math.Log s.SigmaMin + t * VeSchedule.logRatio s

    /// sigma(t), the marginal standard deviation: sqrt(-expm1(2 m)) for VP, -expm1(2 m) for sub-VP,
    /// SigmaMin (SigmaMax / SigmaMin)^t for VE.
    let sigmaAt (sde: Sde) (t: float) =
        match sde with
        | Sde.Vp s -> Math.Sqrt(-(HostMath.expm1 (2.0 * VpSchedule.logMeanCoeffAt s t)))
        | Sde.SubVp s -> -(HostMath.expm1 (2.0 * VpSchedule.logMeanCoeffAt s t))
        | Sde.Ve _ -> Math.Exp(logSigmaAt sde t)

    /// sigma(t)^2.
    let varianceAt (sde: Sde) (t: float) =
        match sde with
        | Sde.Vp s -> -(HostMath.expm1 (2.0 * VpSchedule.logMeanCoeffAt s t))
        | _ -> let v = sigmaAt sde t in v * v

    /// Half log-SNR lambda(t) = log alpha(t) - log sigma(t), strictly decreasing in t.
    let lambdaAt (sde: Sde) (t: float) = logAlphaAt sde t - logSigmaAt sde t

    /// The inverse of `lambdaAt`, in closed form. VP: -m = log(1 + e^(-2 lambda)) / 2. Sub-VP: with
    /// u = alpha, u / (1 - u^2) = e^lambda, so u = 2 k / (1 + sqrt(1 + 4 k^2)) with k = e^lambda, and
    /// -m = -log u is formed from 1 - u without cancellation. Both then solve the quadratic m(t) for t.
    /// VE: lambda = -log sigma is linear in t.
    let timeOfLambda (sde: Sde) (lambda: float) =
        match sde with
        | Sde.Vp s ->
            let a = -2.0 * lambda
            let l = if a > 0.0 then a + HostMath.log1p (Math.Exp(-a)) else HostMath.log1p (Math.Exp a)
            VpSchedule.timeOfLogMean s (0.5 * l)
        | Sde.SubVp s ->
            let minusM =
                if lambda >= 0.0 then
                    // w = 1 / k <= 1: 1 - u = (w + w^2 / (sqrt(w^2 + 4) + 2)) / (w + sqrt(w^2 + 4))
                    let w = Math.Exp(-lambda)
                    let r = Math.Sqrt(w * w + 4.0)
                    -(HostMath.log1p (-((w + w * w / (r + 2.0)) / (w + r))))
                else
                    // k < 1: log u = lambda + log 2 - log(1 + sqrt(1 + 4 k^2)), no underflow of k
                    let k = Math.Exp lambda
                    -(lambda + Math.Log 2.0 - Math.Log(1.0 + Math.Sqrt(1.0 + 4.0 * k * k)))
            VpSchedule.timeOfLogMean s minusM
        | Sde.Ve s -> (-lambda - Math.Log s.SigmaMin) / VeSchedule.logRatio s

    /// The linear drift coefficient f(t): f(x, t) = f(t) x.
    let driftAt (sde: Sde) (t: float) =
        match sde with
        | Sde.Vp s
        | Sde.SubVp s -> -0.5 * VpSchedule.betaAt s t
        | Sde.Ve _ -> 0.0

    /// g(t)^2: beta(t) (VP), beta(t) (1 - alpha^4) (sub-VP), 2 log(SigmaMax / SigmaMin) sigma(t)^2 (VE).
    /// In every case g^2 = d sigma^2 / dt - 2 f sigma^2, so the SDE has the stated marginals.
    let diffusionSquaredAt (sde: Sde) (t: float) =
        match sde with
        | Sde.Vp s -> VpSchedule.betaAt s t
        | Sde.SubVp s -> VpSchedule.betaAt s t * -(HostMath.expm1 (4.0 * VpSchedule.logMeanCoeffAt s t))
        | Sde.Ve s -> 2.0 * VeSchedule.logRatio s * varianceAt sde t

    /// The exact transition from s to t (s < t): x_t | x_s ~ N(a x_s, v I) with a = alpha_t / alpha_s and
    /// v = sigma_t^2 - a^2 sigma_s^2, returned as (a, v). v is formed without cancellation: for VP
    /// -expm1(2 (m_t - m_s)) (the DDPM beta of the interval, in (0, 1) for any step), for VE
    /// sigma_t^2 (1 - e^(-2 (t - s) log ratio)), for sub-VP sigma_t^2 (1 - e^(2 (lambda_t - lambda_s))).
    let inline transitionAt (sde: Sde) (t: float) (s: float) =
        match sde with
        | Sde.Vp p ->
            let dm = VpSchedule.logMeanCoeffAt p t - VpSchedule.logMeanCoeffAt p s
            Math.Exp dm, -(HostMath.expm1 (2.0 * dm))
        | Sde.SubVp p ->
            let dm = VpSchedule.logMeanCoeffAt p t - VpSchedule.logMeanCoeffAt p s
            Math.Exp dm, varianceAt sde t * -(HostMath.expm1 (2.0 * (lambdaAt sde t - lambdaAt sde s)))
        | Sde.Ve p -> 1.0, varianceAt sde t * -(HostMath.expm1 (-2.0 * (t - s) * VeSchedule.logRatio p))

    /// The SDE's own discretisation of the interval [s, t] as (mean factor, variance) of the forward
    /// step x_t = factor x_s + sqrt(variance) z: DDPM for VP and SMLD for VE (both the exact transition
    /// of the interval, i.e. beta_i = 1 - (alpha_t / alpha_s)^2 and sigma_t^2 - sigma_s^2), and
    /// Euler-Maruyama (1 + f(t) dt, g(t)^2 dt) for sub-VP, as in the paper's code. The reverse-diffusion
    /// predictor is built from it.
    let inline discretisationAt (sde: Sde) (t: float) (s: float) =
        match sde with
        | Sde.Vp _
        | Sde.Ve _ -> transitionAt sde t s
        | Sde.SubVp _ -> 1.0 + driftAt sde t * (t - s), diffusionSquaredAt sde t * (t - s)

    /// Ancestral sampling from t down to s as (A, B, C): mean = A x + B score(x, t), sample = mean + C z.
    /// Derived for any linear SDE as the Gaussian posterior q(x_s | x_t, x_0) at Tweedie's
    /// x_0 = (x + sigma_t^2 score) / alpha_t: A = a sigma_s^2 / sigma_t^2 + v / (a sigma_t^2),
    /// B = v / a, C^2 = sigma_s^2 v / sigma_t^2 with (a, v) the transition from s to t. For VE it is SMLD's
    /// published update (A = 1, B = sigma_t^2 - sigma_s^2); VP keeps DDPM's published form
    /// (A = 1 / sqrt(1 - beta_i), B = beta_i A) with noise variance beta_i (the posterior's is
    /// beta_i sigma_s^2 / sigma_t^2). The paper has none for sub-VP: it gets the posterior.
    let ancestralAt (sde: Sde) (t: float) (s: float) =
        let a, v = transitionAt sde t s
        match sde with
        | Sde.Vp _ ->
            let r = 1.0 / Math.Sqrt(1.0 - v)
            r, v * r, Math.Sqrt v
        | Sde.Ve _ -> 1.0, v, Math.Sqrt(varianceAt sde s * v / varianceAt sde t)
        | Sde.SubVp _ ->
            let vt, vs = varianceAt sde t, varianceAt sde s
            a * vs / vt + v / (a * vt), v / a, Math.Sqrt(vs * v / vt)

    /// alpha_i of the Langevin corrector for the step from t down to s: 1 - beta_i of the interval for
    /// VP and sub-VP (the ratio (alpha_t / alpha_s)^2: both share the drift), 1 for VE.
    let langevinAlphaAt (sde: Sde) (t: float) (s: float) =
        match sde with
        | Sde.Vp p
        | Sde.SubVp p -> 1.0 + HostMath.expm1 (2.0 * (VpSchedule.logMeanCoeffAt p t - VpSchedule.logMeanCoeffAt p s))
        | Sde.Ve _ -> 1.0

    /// The prior's standard deviation: 1 (VP, sub-VP) or SigmaMax (VE); the prior is N(0, std^2 I).
    let priorStd (sde: Sde) =
        match sde with
        | Sde.Ve s -> s.SigmaMax
        | _ -> 1.0

    // ---- tensor versions (twins of the host versions) ----

    /// log alpha(t) for a time tensor.
    let logAlpha (sde: Sde) (t: Tensor) : Tensor =
        match sde with
        | Sde.Vp s
        | Sde.SubVp s ->
            // m = t (-1/4 (BetaMax - BetaMin) t - 1/2 BetaMin)
            use inner = Tensors.affine t (-0.25 * (s.BetaMax - s.BetaMin)) (-0.5 * s.BetaMin)
            t.mul (inner)
        | Sde.Ve _ -> torch.zeros_like (t)

    /// alpha(t) for a time tensor.
    let alpha (sde: Sde) (t: Tensor) : Tensor =
        use m = logAlpha sde t
        m.exp ()

    /// -expm1(2 m(t)) = 1 - alpha^2 (VP and sub-VP).
    let private oneMinusAlphaSquared (sde: Sde) (t: Tensor) : Tensor =
        use m = logAlpha sde t
        use m2 = Tensors.mulScalar m 2.0
        use e = torch.expm1 m2
        e.neg ()

    /// sigma(t) for a time tensor.
    let sigma (sde: Sde) (t: Tensor) : Tensor =
        match sde with
        | Sde.Vp _ ->
            use v = oneMinusAlphaSquared sde t
            v.sqrt ()
        | Sde.SubVp _ -> oneMinusAlphaSquared sde t
        | Sde.Ve s ->
            use l = Tensors.affine t (VeSchedule.logRatio s) (Math.Log s.SigmaMin)
            l.exp ()

    /// sigma(t)^2 for a time tensor.
    let variance (sde: Sde) (t: Tensor) : Tensor =
        match sde with
        | Sde.Vp _ -> oneMinusAlphaSquared sde t
        | _ ->
            use s = sigma sde t
            Tensors.square s

    /// Half log-SNR lambda(t) for a time tensor.
    let lambda (sde: Sde) (t: Tensor) : Tensor =
        use m = logAlpha sde t
        use s = sigma sde t
        use ls = s.log ()
        m.sub (ls)

    /// f(t) for a time tensor.
    let driftCoefficient (sde: Sde) (t: Tensor) : Tensor =
        match sde with
        | Sde.Vp s
        | Sde.SubVp s -> Tensors.affine t (-0.5 * (s.BetaMax - s.BetaMin)) (-0.5 * s.BetaMin)
        | Sde.Ve _ -> torch.zeros_like (t)

    /// g(t)^2 for a time tensor.
    let diffusionSquared (sde: Sde) (t: Tensor) : Tensor =
        match sde with
        | Sde.Vp s -> Tensors.affine t (s.BetaMax - s.BetaMin) s.BetaMin
        | Sde.SubVp s ->
            use b = Tensors.affine t (s.BetaMax - s.BetaMin) s.BetaMin
            use m = logAlpha sde t
            use m4 = Tensors.mulScalar m 4.0
            use e = torch.expm1 m4
            use d = e.neg ()
            b.mul (d)
        | Sde.Ve s ->
            use v = variance sde t
            Tensors.mulScalar v (2.0 * VeSchedule.logRatio s)

    /// g(t) for a time tensor.
    let diffusion (sde: Sde) (t: Tensor) : Tensor =
        use g2 = diffusionSquared sde t
        g2.sqrt ()

    /// Forward drift f(x, t) = f(t) x.
    let drift (sde: Sde) (x: Tensor) (t: Tensor) : Tensor =
        use tb = Tensors.broadcastTime "t" t x
        use f = driftCoefficient sde tb
        f.mul (x)

    /// Marginal of x_t given x_0: mean alpha_t x_0 and standard deviation sigma_t (broadcast over
    /// x_0's trailing dims).
    let marginal (sde: Sde) (x0: Tensor) (t: Tensor) : Tensor * Tensor =
        use tb = Tensors.broadcastTime "t" t x0
        use a = alpha sde tb
        a.mul (x0), sigma sde tb

    /// x_t = alpha_t x_0 + sigma_t z.
    let perturb (sde: Sde) (x0: Tensor) (t: Tensor) (z: Tensor) : Tensor =
        Check.sameShape "z" z x0 "x0"
        use tb = Tensors.broadcastTime "t" t x0
        use a = alpha sde tb
        use s = sigma sde tb
        use ax = a.mul (x0)
        use sz = s.mul (z)
        Tensors.add ax sz

    /// A draw from the prior N(0, priorStd^2 I) with the given shape, dtype and device.
    let priorSample (sde: Sde) (shape: int64[]) (dtype: torch.ScalarType) (device: torch.Device) (noise: Noise) : Tensor =
        Check.shape "shape" shape
        if not (dtype = torch.float32 || dtype = torch.float64 || dtype = torch.float16 || dtype = torch.bfloat16) then
            Check.fail "dtype" dtype "a floating-point dtype"
        Check.notNull "device" device
        let z = Noise.draw noise shape dtype device
        let std = priorStd sde
        if std <> 1.0 then
            use s = Tensors.scalar std
            z.mul_ (s) |> ignore
        z

    /// Log-density of the prior per sample: -D/2 log(2 pi std^2) - |z|^2 / (2 std^2), D = elements per sample.
    let priorLogp (sde: Sde) (z: Tensor) : Tensor =
        let d = if z.dim () <= 1L then z.numel () else z.numel () / z.shape.[0]
        use flat = if z.dim () <= 1L then z.reshape ([| 1L; -1L |]) else z.reshape ([| z.shape.[0]; -1L |])
        use sq = Tensors.square flat
        use s = sq.sum (1L)
        let v = priorStd sde ** 2.0
        Tensors.affine s (-0.5 / v) (-0.5 * float d * Math.Log(2.0 * Math.PI * v))

    /// The probability-flow ODE's coefficients (f(t), c(t)) with drift f(t) x + c(t) score,
    /// c = -g(t)^2 / 2 (host); the samplers and the likelihood combine them with a model's output.
    let inline probabilityFlowAt (sde: Sde) (t: float) = driftAt sde t, -0.5 * diffusionSquaredAt sde t

    /// The tensor twin of `probabilityFlowAt`: (f(t), -g(t)^2 / 2) for a time tensor, two distinct tensors.
    let probabilityFlowCoefficients (sde: Sde) (t: Tensor) : Tensor * Tensor =
        let f = driftCoefficient sde t
        match sde with
        | Sde.Vp _ -> f, f.clone () // VP: g^2 = beta and f = -beta / 2, so c = f
        | _ ->
            use g2 = diffusionSquared sde t
            f, Tensors.mulScalar g2 -0.5

    /// Reverse-time SDE drift f(x, t) - g(t)^2 s, given the score at (x, t).
    let reverseDrift (sde: Sde) (score: Tensor) (x: Tensor) (t: Tensor) : Tensor =
        use tb = Tensors.broadcastTime "t" t x
        use f = driftCoefficient sde tb
        use g2 = diffusionSquared sde tb
        use fx = f.mul (x)
        use gs = g2.mul (score)
        fx.sub (gs)

    /// Probability-flow ODE drift f(x, t) - 1/2 g(t)^2 s, given the score at (x, t).
    let probabilityFlowDrift (sde: Sde) (score: Tensor) (x: Tensor) (t: Tensor) : Tensor =
        use tb = Tensors.broadcastTime "t" t x
        let f, c = probabilityFlowCoefficients sde tb
        use f = f
        use c = c
        use fx = f.mul (x)
        use cs = c.mul (score)
        Tensors.add fx cs
