namespace ScoreSde

open System

/// The linear noise schedule of the VP and sub-VP SDEs: beta(t) = BetaMin + t (BetaMax - BetaMin).
type VpSchedule = { BetaMin: float; BetaMax: float }

/// The geometric noise schedule of the VE SDE: sigma(t) = SigmaMin (SigmaMax / SigmaMin)^t.
type VeSchedule = { SigmaMin: float; SigmaMax: float }

/// The DDPM discretisation of the VP-SDE with N steps (the paper code's convention).
type DdpmDiscretisation =
    {
        /// beta_i = linspace(BetaMin / N, BetaMax / N, N).
        Betas: float[]
        /// alpha_i = 1 - beta_i.
        Alphas: float[]
    }

[<RequireQualifiedAccess>]
module VpSchedule =
    /// A validated schedule: BetaMin > 0, BetaMax >= BetaMin, both finite.
    let create (betaMin: float) (betaMax: float) : VpSchedule =
        Check.positive "betaMin" betaMin
        Check.finite "betaMax" betaMax
        if betaMax < betaMin then
            Check.fail "betaMax" betaMax (sprintf "at least betaMin (%g)" betaMin)
        { BetaMin = betaMin; BetaMax = betaMax }

    /// The paper's schedule: beta from 0.1 to 20.
    let standard = { BetaMin = 0.1; BetaMax = 20.0 }

    /// beta(t).
    let betaAt (s: VpSchedule) (t: float) = s.BetaMin + t * (s.BetaMax - s.BetaMin)

    /// m(t) = log alpha(t) = -1/4 t^2 (BetaMax - BetaMin) - 1/2 t BetaMin.
    let logMeanCoeffAt (s: VpSchedule) (t: float) = -0.5 * (s.BetaMin * t + 0.5 * (s.BetaMax - s.BetaMin) * t * t)

    /// The time at which m(t) = -M (M >= 0): the positive root of the quadratic, written without
    /// cancellation, t = 4 M / (BetaMin + sqrt(BetaMin^2 + 4 (BetaMax - BetaMin) M)).
    let timeOfLogMean (s: VpSchedule) (minusM: float) =
        4.0 * minusM
        / (s.BetaMin + Math.Sqrt(s.BetaMin * s.BetaMin + 4.0 * (s.BetaMax - s.BetaMin) * minusM))

    /// The paper code's DDPM discretisation with N steps. Rejects N for which beta_i = BetaMax / N
    /// reaches 1 (sqrt(1 - beta_i) would be NaN): with the default BetaMax = 20 that is N <= 20.
    let discretise (s: VpSchedule) (n: int) : DdpmDiscretisation =
        Check.positiveInt "n" n
        if s.BetaMax / float n >= 1.0 then
            Check.fail "n" n (sprintf "greater than BetaMax (%g) so that every beta_i = beta/N stays below 1" s.BetaMax)
        let betas =
            Array.init n (fun i ->
                let f = if n = 1 then 0.0 else float i / float (n - 1)
                (s.BetaMin + f * (s.BetaMax - s.BetaMin)) / float n)
        { Betas = betas; Alphas = betas |> Array.map (fun b -> 1.0 - b) }

    /// Index of time t in an N-step DDPM discretisation: floor(t (N - 1) / T).
    let ddpmIndex (n: int) (t: float) = max 0 (min (n - 1) (int (Math.Floor(t * float (n - 1)))))

[<RequireQualifiedAccess>]
module VeSchedule =
    /// A validated schedule: 0 < SigmaMin < SigmaMax, both finite.
    let create (sigmaMin: float) (sigmaMax: float) : VeSchedule =
        Check.positive "sigmaMin" sigmaMin
        Check.positive "sigmaMax" sigmaMax
        if sigmaMax <= sigmaMin then
            Check.fail "sigmaMax" sigmaMax (sprintf "above sigmaMin (%g)" sigmaMin)
        { SigmaMin = sigmaMin; SigmaMax = sigmaMax }

    /// The paper's schedule for its toy problems and CIFAR-10 default: sigma from 0.01 to 50.
    let standard = { SigmaMin = 0.01; SigmaMax = 50.0 }

    /// log(SigmaMax / SigmaMin): d log sigma / dt.
    let logRatio (s: VeSchedule) = Math.Log(s.SigmaMax / s.SigmaMin)
