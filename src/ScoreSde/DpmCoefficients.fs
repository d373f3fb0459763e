namespace ScoreSde

open System

/// The coefficients of one single-step DPM-Solver update from s to t (order 1 to 3), as host
/// scalars: the intermediate states u_1 = U1a x + U1s m_s at time S1 and
/// u_2 = U2a x + U2s m_s + U21 m_1 at time S2, the result x_t = A x + Ws m_s + W1 m_1 + W2 m_2, and
/// the order k - 1 solution that shares the evaluations (the adaptive method's error estimate),
/// x_lower = LowerA x + LowerS m_s + Lower1 m_1. Unused entries are 0.
type internal SingleStepPlan =
    { S1: float
      S2: float
      U1a: float
      U1s: float
      U2a: float
      U2s: float
      U21: float
      A: float
      Ws: float
      W1: float
      W2: float
      LowerA: float
      LowerS: float
      Lower1: float }

/// Functions of `SingleStepPlan`.
[<RequireQualifiedAccess>]
module internal SingleStepPlan =
    /// The plan of a first-order step x_t = a x + w m_s (its own lower-order solution).
    let firstOrder (a: float) (w: float) : SingleStepPlan =
        { S1 = 0.0
          S2 = 0.0
          U1a = 0.0
          U1s = 0.0
          U2a = 0.0
          U2s = 0.0
          U21 = 0.0
          A = a
          Ws = w
          W1 = 0.0
          W2 = 0.0
          LowerA = a
          LowerS = w
          Lower1 = 0.0 }

/// The float64 arithmetic of the DPM solvers (`DpmArithmetic.Float64`) for any SDE: its alpha, sigma and
/// lambda (`Sde`, sigma_t from expm1), phi_k with a power series near 0, every coefficient a host double.
[<RequireQualifiedAccess>]
module internal DpmFloat64 =
    /// phi_k(H) for k = 1, 2, 3: phi_1 = expm1(H), phi_2 = phi_1 / H - 1, phi_3 = phi_2 / H - 1/2,
    /// i.e. phi_k(H) = sum_(j >= 1) H^j / (j + k - 1)!. A power series for small |H| avoids the
    /// cancellation of the recurrence.
    let phi (k: int) (h: float) : float =
        if k < 1 || k > 3 then
            Check.fail "k" k "1, 2 or 3"
        if abs h < 1e-2 then
            // terms H^j / (j + k - 1)! for j = 1..8: truncation error below 1e-2^9 / 9! ~ 1e-24
            let mutable term = 1.0
            let mutable sum = 0.0
            let mutable fact = 1.0
            for i in 1 .. k - 1 do
                fact <- fact * float i
            for j in 1..8 do
                term <- term * h
                fact <- fact * float (j + k - 1)
                sum <- sum + term / fact
            sum
        else
            let p1 = HostMath.expm1 h
            match k with
            | 1 -> p1
            | 2 -> p1 / h - 1.0
            | _ -> (p1 / h - 1.0) / h - 0.5

    /// (r, c, H) of the step from s to t (lambdas ls, lt): x_t = r x_s - c [phi_1(H) m_s + ...].
    let stepCoefficients (sde: Sde) (dataPrediction: bool) (s: float) (t: float) (ls: float) (lt: float) =
        let h = lt - ls
        if dataPrediction then
            Sde.sigmaAt sde t / Sde.sigmaAt sde s, Sde.alphaAt sde t, -h
        else
            Math.Exp(Sde.logAlphaAt sde t - Sde.logAlphaAt sde s), Sde.sigmaAt sde t, h

    /// The fractions r1 (and r2) of a single-step update of order k from s to t in float64: the lambdas
    /// of the update's own k-interval grid of the run's type, (lambda_i - lambda_s) / (lambda_t -
    /// lambda_s), as the published sampler's timesteps_inner: 1/2 or 1/3 and 2/3 on the logSNR grid
    /// (and on explicit grids), the lambdas of equally spaced times (or square roots of times) on the
    /// uniform (quadratic) grid.
    let fractions (sde: Sde) (grid: TimeGrid) (order: int) (s: float) (t: float) : float * float =
        let inner (f: float) =
            match grid with
            | TimeGrid.Quadratic ->
                let a, b = Math.Sqrt s, Math.Sqrt t
                let r = a + (b - a) * f
                r * r
            | _ -> s + (t - s) * f
        match grid, order with
        | _, 1 -> 0.0, 0.0
        | (TimeGrid.LogSnr | TimeGrid.Explicit _), 2 -> 0.5, 0.0
        | (TimeGrid.LogSnr | TimeGrid.Explicit _), _ -> 1.0 / 3.0, 2.0 / 3.0
        | _ ->
            let ls, lt = Sde.lambdaAt sde s, Sde.lambdaAt sde t
            let fraction i = (Sde.lambdaAt sde (inner (float i / float order)) - ls) / (lt - ls)
            fraction 1, (if order > 2 then fraction 2 else 0.0)

    /// The float64 coefficients of a single-step update of order k (1 to 3) from s to t with fractions
    /// r1, r2; the lower-order solution is DPM-Solver-1 (order 2) or DPM-Solver-2 with r1 (order 3).
    let singleStep (sde: Sde) (dataPrediction: bool) (order: int) (r1: float) (r2: float) (s: float) (t: float) : SingleStepPlan =
        let ls, lt = Sde.lambdaAt sde s, Sde.lambdaAt sde t
        let h = lt - ls
        let r, c, hh = stepCoefficients sde dataPrediction s t ls lt
        let p1, p2 = phi 1 hh, phi 2 hh
        let first = SingleStepPlan.firstOrder r (-c * p1)
        if order = 1 then
            first
        else
            let s1 = Sde.timeOfLambda sde (ls + r1 * h)
            let ra, ca, ha = stepCoefficients sde dataPrediction s s1 ls (ls + r1 * h)
            // DPM-Solver-2: x_t = r x - c phi_1 m_s - c phi_1 / (2 r1) (m_1 - m_s)
            let k = c * p1 / (2.0 * r1)
            let plan = { first with S1 = s1; U1a = ra; U1s = -ca * phi 1 ha }
            if order = 2 then
                { plan with Ws = -c * p1 + k; W1 = -k }
            else
                let s2 = Sde.timeOfLambda sde (ls + r2 * h)
                // u_2 = r x - c [phi_1(r2 H) m_s + (r2 / r1) phi_2(r2 H) (m_1 - m_s)]
                let rb, cb, hb = stepCoefficients sde dataPrediction s s2 ls (ls + r2 * h)
                let k2 = cb * (r2 / r1) * phi 2 hb
                // x_t = r x - c [phi_1(H) m_s + phi_2(H) / r2 (m_2 - m_s)]
                let k3 = c * p2 / r2
                { plan with
                    S2 = s2
                    U2a = rb
                    U2s = -cb * phi 1 hb + k2
                    U21 = -k2
                    Ws = -c * p1 + k3
                    W2 = -k3
                    LowerS = -c * p1 + k
                    Lower1 = -k }

    /// Coefficients on (m_0, m_1, m_2) (newest first) of the bracket phi_1 m_0 + phi_2 D_1 + phi_3 D_2
    /// (order 3) or phi_1 m_0 + phi_1 / 2 D_1 (order 2), given the lambda spacings h (this step) and
    /// h0, h1 (the previous two). D_2 is d2Factor (D_1^0 - D_1^1) / (r0 + r1): 1 as published, 2 for
    /// the Taylor-exact update.
    let multiStepWeights (order: int) (d2Factor: float) (hh: float) (h: float) (h0: float) (h1: float) : float[] =
        let p1 = phi 1 hh
        match order with
        | 1 -> [| p1; 0.0; 0.0 |]
        | 2 ->
            // D_1 = (m_0 - m_1) / r0, r0 = h0 / h
            let r0 = h0 / h
            [| p1 * (1.0 + 0.5 / r0); -p1 * 0.5 / r0; 0.0 |]
        | _ ->
            let p2, p3 = phi 2 hh, phi 3 hh
            let r0, r1 = h0 / h, h1 / h
            let d10 = [| 1.0 / r0; -1.0 / r0; 0.0 |]
            let d11 = [| 0.0; 1.0 / r1; -1.0 / r1 |]
            let diff = Array.map2 (-) d10 d11
            let d1 = Array.map2 (fun a b -> a + r0 / (r0 + r1) * b) d10 diff
            // (D_1^0 - D_1^1) / (r0 + r1) estimates h^2 m'' / 2; the Taylor term is phi_3 h^2 m''.
            let d2 = diff |> Array.map (fun v -> d2Factor * v / (r0 + r1))
            [| p1 + p2 * d1.[0] + p3 * d2.[0]; p2 * d1.[1] + p3 * d2.[1]; p2 * d1.[2] + p3 * d2.[2] |]

/// The arithmetic of dpm_solver_pytorch.py (LuChengTHU/dpm-solver), the published DPM-Solver, for
/// the linear VP-SDE (its only noise schedule of this kind; runs with sub-VP and VE compute in float64): its noise schedule (NoiseScheduleVP 'linear'), time grids (get_time_steps) and
/// update coefficients, computed with float32 operations in its order, the Python constants
/// rounded to float32 where PyTorch rounds them. Every value is a float32 held in a double. The
/// element-wise combinations themselves run in the samples' dtype (`DpmSolver`), folded into one
/// weight per model output.
///
/// What differs from the float64 arithmetic (`DpmArithmetic.Float64`): sigma_t = sqrt(1 - exp(2 m)) and
/// lambda_t lose precision near t = eps (3e-4 relative in sigma at t = 1e-3), so the grid's last time is
/// inverse_lambda(lambda(1e-3)) rounded, 1.0005e-3 rather than 1e-3, and the denoising step runs at
/// float32(eps). exp, log and expm1 are correctly rounded here; PyTorch's vectorised float32 versions
/// round 4.6% of arguments the other way (one ulp).
[<RequireQualifiedAccess>]
module internal DpmPublished =
    /// Round to float32: every operation below rounds its result as a float32 tensor operation does
    /// (a double operation on float32 values, then one rounding, gives the float32 result).
    let inline f32 (v: float) = float (float32 v)

    let inline private (+!) (a: float) (b: float) = f32 (a + b)
    let inline private (-!) (a: float) (b: float) = f32 (a - b)
    let inline private ( *! ) (a: float) (b: float) = f32 (a * b)
    let inline private (/!) (a: float) (b: float) = f32 (a / b)
    let private exp32 (v: float) = f32 (Math.Exp v)
    let private log32 (v: float) = f32 (Math.Log v)
    let private sqrt32 (v: float) = f32 (Math.Sqrt v)
    let private expm132 (v: float) = f32 (HostMath.expm1 v)
    let private log1p32 (v: float) = f32 (HostMath.log1p v)

    /// marginal_log_mean_coeff: -0.25 t^2 (beta_1 - beta_0) - 0.5 t beta_0.
    let logMeanCoeff (sde: VpSchedule) (t: float) = (-0.25 *! (t *! t)) *! f32 (sde.BetaMax - sde.BetaMin) -! (0.5 *! t) *! f32 sde.BetaMin

    /// marginal_alpha: exp(m).
    let alpha (sde: VpSchedule) (t: float) = exp32 (logMeanCoeff sde t)

    /// marginal_std: sqrt(1 - exp(2 m)).
    let sigma (sde: VpSchedule) (t: float) = sqrt32 (1.0 -! exp32 (2.0 *! logMeanCoeff sde t))

    /// marginal_lambda: m - 0.5 log(1 - exp(2 m)).
    let lambda (sde: VpSchedule) (t: float) =
        let m = logMeanCoeff sde t
        m -! 0.5 *! log32 (1.0 -! exp32 (2.0 *! m))

    /// torch.logaddexp(a, b) on float32: max(a, b) + log1p(exp(-|a - b|)).
    let private logAddExp (a: float) (b: float) = if Double.IsInfinity a && a = b then a else max a b +! log1p32 (exp32 (-(abs (a -! b))))

    /// inverse_lambda: with tmp = 2 (beta_1 - beta_0) logaddexp(-2 lambda, 0) and
    /// Delta = beta_0^2 + tmp, t = tmp / (sqrt(Delta) + beta_0) / (beta_1 - beta_0).
    let inverseLambda (sde: VpSchedule) (l: float) =
        let spread = sde.BetaMax - sde.BetaMin
        let tmp = f32 (2.0 * spread) *! logAddExp (-2.0 *! l) 0.0
        let delta = f32 (sde.BetaMin ** 2.0) +! tmp
        tmp /! (sqrt32 delta +! f32 sde.BetaMin) /! f32 spread

    /// torch.linspace(start, stop, n) in float32 by its definition: step = (stop - start) / (n - 1);
    /// point i is start + step i in the first half and stop - step (n - 1 - i) in the second, each
    /// one fused multiply-add. (PyTorch 1.13's vectorised loop fills blocks of 16 from a block's first
    /// point instead, which moves some points by an ulp; libtorch 2.10 differs again.)
    let linspace (start: float) (stop: float) (n: int) : float[] =
        let a, b = f32 start, f32 stop
        if n = 1 then
            [| a |]
        else
            let step = (b -! a) /! f32 (float (n - 1))
            let half = n / 2
            Array.init n (fun i -> if i < half then f32 (a + step * float i) else f32 (b - step * float (n - 1 - i)))

    /// get_time_steps(skip_type, t_T, t_0, N): the N + 1 times of a grid from tStart to tEnd.
    /// logSNR: uniform in lambda between lambda(t_T) and lambda(t_0), mapped back by inverse_lambda;
    /// time_uniform: linspace(t_T, t_0); time_quadratic: linspace(sqrt(t_T), sqrt(t_0)) squared.
    let timeSteps (sde: VpSchedule) (grid: TimeGrid) (tStart: float) (tEnd: float) (n: int) : float[] =
        match grid with
        | TimeGrid.LogSnr -> linspace (lambda sde (f32 tStart)) (lambda sde (f32 tEnd)) (n + 1) |> Array.map (inverseLambda sde)
        | TimeGrid.Uniform -> linspace tStart tEnd (n + 1)
        | TimeGrid.Quadratic -> linspace (Math.Pow(tStart, 0.5)) (Math.Pow(tEnd, 0.5)) (n + 1) |> Array.map (fun v -> v *! v)
        | TimeGrid.Explicit ts -> Array.map f32 ts

    /// The fractions r1 (and r2) of a single-step update of order k from s to t: the lambdas of the
    /// update's own k-interval grid of the run's type (the published sampler's timesteps_inner),
    /// (lambda_i - lambda_0) / (lambda_k - lambda_0). Explicit grids use the logSNR rule.
    let fractions (sde: VpSchedule) (grid: TimeGrid) (order: int) (s: float) (t: float) : float * float =
        if order <= 1 then
            0.0, 0.0
        else
            let inner =
                match grid with
                | TimeGrid.Explicit _ -> timeSteps sde TimeGrid.LogSnr s t order
                | g -> timeSteps sde g s t order
            let ls = inner |> Array.map (lambda sde)
            let h = ls.[order] -! ls.[0]
            (ls.[1] -! ls.[0]) /! h, (if order > 2 then (ls.[2] -! ls.[0]) /! h else 0.0)

    /// (a, b) with the model's prediction for the solver = a x + b out at time t: the noise prediction
    /// of model_wrapper's noise_pred_fn ("noise": out; "x_start": (x - alpha out) / sigma; "score":
    /// -sigma out), and for DPM-Solver++ data_prediction_fn's (x - sigma eps) / alpha of it.
    let predictionCoefficients (sde: VpSchedule) (output: ModelOutput) (dataPrediction: bool) (t: float) : float * float =
        let a, s = alpha sde t, sigma sde t
        let na, nb =
            match output with
            | ModelOutput.Noise -> 0.0, 1.0
            | ModelOutput.Data -> 1.0 / s, -a / s
            | ModelOutput.Score -> 0.0, -s
        if not dataPrediction then na, nb
        elif output = ModelOutput.Data then 0.0, 1.0
        else (1.0 - s * na) / a, -s * nb / a

    /// dpm_solver_first_update from s to t: (A, w) with x_t = A x + w m_s.
    let firstOrder (sde: VpSchedule) (dataPrediction: bool) (s: float) (t: float) : float * float =
        let h = lambda sde t -! lambda sde s
        if dataPrediction then
            sigma sde t /! sigma sde s, -(alpha sde t *! expm132 (-h))
        else
            exp32 (logMeanCoeff sde t -! logMeanCoeff sde s), -(sigma sde t *! expm132 h)

    /// The multistep updates of order 1 to 3 (dpm_solver_first_update,
    /// multistep_dpm_solver_second_update and multistep_dpm_solver_third_update, solver_type
    /// 'dpmsolver') from times.[0] (the newest evaluation) to t, with times newest first: (A, w) with
    /// x_t = A x + sum_j w_j m_j, m_0 the newest prediction. `d2Factor` scales the third-order update's
    /// second difference D2 = (D1_0 - D1_1) / (r0 + r1): 1 as published, 2 for the Taylor-exact form.
    let multiStep (sde: VpSchedule) (dataPrediction: bool) (order: int) (d2Factor: float) (times: float[]) (t: float) : float * float[] =
        match order with
        | 1 ->
            let a, w = firstOrder sde dataPrediction times.[0] t
            a, [| w |]
        | _ ->
            let t0 = times.[0]
            let l0, lt = lambda sde t0, lambda sde t
            let s0, st = sigma sde t0, sigma sde t
            let lat = logMeanCoeff sde t
            let at = exp32 lat
            let h = lt -! l0
            let a = if dataPrediction then st /! s0 else exp32 (lat -! logMeanCoeff sde t0)
            let phi1 = if dataPrediction then expm132 (-h) else expm132 h
            let c = if dataPrediction then at else st
            if order = 2 then
                // x_t = A x - c phi1 m_0 - 0.5 c phi1 D1_0, D1_0 = (1 / r0) (m_0 - m_1)
                let r0 = (l0 -! lambda sde times.[1]) /! h
                let k = 1.0 /! r0
                let c1 = c *! phi1
                let c2 = 0.5 *! c1
                a, [| -c1 - c2 * k; c2 * k |]
            else
                let l1, l2 = lambda sde times.[1], lambda sde times.[2]
                let r0, r1 = (l0 -! l1) /! h, (l1 -! l2) /! h
                let k0, k1 = 1.0 /! r0, 1.0 /! r1
                let q, p = r0 /! (r0 +! r1), 1.0 /! (r0 +! r1)
                // D1 = D1_0 + q (D1_0 - D1_1), D2 = p (D1_0 - D1_1) with D1_0 = k0 (m_0 - m_1) and
                // D1_1 = k1 (m_1 - m_2); x_t = A x + cm m_0 + cd1 D1 + cd2 D2
                let phi2 = if dataPrediction then phi1 /! h +! 1.0 else phi1 /! h -! 1.0
                let phi3 = phi2 /! h -! 0.5
                let cm = -(c *! phi1)
                let cd1 = if dataPrediction then c *! phi2 else -(c *! phi2)
                let cd2 = -(c *! phi3) * d2Factor
                a,
                [| cm + cd1 * k0 * (1.0 + q) + cd2 * p * k0
                   -cd1 * (k0 + q * (k0 + k1)) - cd2 * p * (k0 + k1)
                   cd1 * q * k1 + cd2 * p * k1 |]

    /// The single-step updates of order 1 to 3 (dpm_solver_first_update,
    /// singlestep_dpm_solver_second_update and singlestep_dpm_solver_third_update, solver_type
    /// 'dpmsolver') from s to t with fractions r1, r2 (`fractions`). The lower-order solution is only
    /// filled in for order 1 (the adaptive method, its only user, computes in float64).
    let singleStep (sde: VpSchedule) (dataPrediction: bool) (order: int) (r1: float) (r2: float) (s: float) (t: float) : SingleStepPlan =
        let ls = lambda sde s
        let h = lambda sde t -! ls
        let las = logMeanCoeff sde s
        let ss = sigma sde s
        // the linear part and the phi_1 coefficient of a sub-step from s to u (lambda_s + r h)
        let towards (u: float) (rh: float) =
            if dataPrediction then
                sigma sde u /! ss, alpha sde u, expm132 (-rh)
            else
                exp32 (logMeanCoeff sde u -! las), sigma sde u, expm132 rh
        let a, c, phi1 = towards t h
        let plan = SingleStepPlan.firstOrder a (-(c *! phi1))
        if order = 1 then
            plan
        else
            let s1 = inverseLambda sde (ls +! r1 *! h)
            let a1, c1, phi11 = towards s1 (r1 *! h)
            let plan = { plan with S1 = s1; U1a = a1; U1s = -(c1 *! phi11) }
            if order = 2 then
                // x_t = A x - c phi1 m_s - (0.5 / r1) c phi1 (m_1 - m_s)
                let k = (0.5 /! r1) *! (c *! phi1)
                { plan with Ws = -(c *! phi1) + k; W1 = -k }
            else
                let r2h = r2 *! h
                let s2 = inverseLambda sde (ls +! r2h)
                let a2, c2, phi12 = towards s2 r2h
                let phi22 = if dataPrediction then expm132 (-r2h) /! r2h +! 1.0 else expm132 r2h /! r2h -! 1.0
                let phi2 = if dataPrediction then phi1 /! h +! 1.0 else phi1 /! h -! 1.0
                // u_2 = A2 x - c2 phi12 m_s -+ (r2 / r1) c2 phi22 (m_1 - m_s);
                // x_t = A x - c phi1 m_s -+ (1 / r2) c phi2 (m_2 - m_s) (+ for DPM-Solver++)
                let sign = if dataPrediction then 1.0 else -1.0
                let k2 = sign * ((r2 /! r1) *! (c2 *! phi22))
                let k3 = sign * ((1.0 /! r2) *! (c *! phi2))
                { plan with
                    S2 = s2
                    U2a = a2
                    U2s = -(c2 *! phi12) - k2
                    U21 = k2
                    Ws = -(c *! phi1) - k3
                    W2 = k3 }
