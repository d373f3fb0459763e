/// Gaussian mixtures with diagonal covariances: exact samples and the exact noise prediction of the
/// marginals of each SDE (VP, sub-VP, VE), so a sampler's distance to the data is solver error plus
/// Monte Carlo noise only.
module ScoreSde.Quality.Mixture

open System
open TorchSharp
open ScoreSde

type Tensor = torch.Tensor

/// sum_k Weights[k] N(Means[k], diag(Stds[k]^2)).
type Mixture =
    { Name: string
      Description: string
      Weights: float[]
      Means: float[][]
      Stds: float[][] }

    member m.Dim = m.Means.[0].Length
    member m.Modes = m.Weights.Length

/// (a) 2-D, 8 equal modes on the unit circle, std 0.1.
let circle8 =
    { Name = "a"
      Description = "2-D, 8 equal modes on the unit circle, std 0.1"
      Weights = Array.create 8 (1.0 / 8.0)
      Means = Array.init 8 (fun k -> let a = 2.0 * Math.PI * float k / 8.0 in [| Math.Cos a; Math.Sin a |])
      Stds = Array.init 8 (fun _ -> [| 0.1; 0.1 |]) }

/// (b) 16-D, 5 modes of unequal weights (0.30, 0.25, 0.20, 0.15, 0.10) and isotropic widths
/// (0.05, 0.1, 0.2, 0.3, 0.5); mean k is 1.5 u_k with u_k the unit vector along
/// (sin(0.7 (k + 1)(d + 1) + k))_{d = 0..15}.
let unequal16 =
    let dim = 16
    let means =
        Array.init 5 (fun k ->
            let v = Array.init dim (fun d -> Math.Sin(0.7 * float (k + 1) * float (d + 1) + float k))
            let n = Math.Sqrt(Array.sumBy (fun x -> x * x) v)
            v |> Array.map (fun x -> 1.5 * x / n))
    let widths = [| 0.05; 0.1; 0.2; 0.3; 0.5 |]
    { Name = "b"
      Description = "16-D, 5 modes, weights 0.30/0.25/0.20/0.15/0.10, stds 0.05/0.1/0.2/0.3/0.5"
      Weights = [| 0.30; 0.25; 0.20; 0.15; 0.10 |]
      Means = means
      Stds = widths |> Array.map (fun s -> Array.create dim s) }

/// n exact samples [n, D] in float64: a mode drawn by weight, then its Gaussian.
let sample (m: Mixture) (n: int) (g: torch.Generator) : Tensor =
    use scope = torch.NewDisposeScope()
    let w = torch.tensor (m.Weights, dtype = torch.float64)
    let k = torch.multinomial (w, int64 n, true, g)
    let means = torch.tensor(Array.concat m.Means, dtype = torch.float64).reshape([| int64 m.Modes; int64 m.Dim |])
    let stds = torch.tensor(Array.concat m.Stds, dtype = torch.float64).reshape([| int64 m.Modes; int64 m.Dim |])
    let z = torch.randn ([| int64 n; int64 m.Dim |], dtype = torch.float64, generator = g)
    (means.index_select (0L, k) + stds.index_select (0L, k) * z).MoveToOuterDisposeScope()

/// exp(x) - 1 without cancellation (Kahan's trick).
let private expm1 (x: float) =
    let u = Math.Exp x
    if u = 1.0 then x
    elif u - 1.0 = -1.0 then -1.0
    else (u - 1.0) * x / Math.Log u

/// alpha(t) and sigma(t)^2 of the SDE's marginal, from the paper's formulas written here (VP: e^m and
/// 1 - e^(2m); sub-VP: e^m and (1 - e^(2m))^2; VE: 1 and (sigma_min (sigma_max / sigma_min)^t)^2).
let marginal (sde: Sde) (t: float) =
    match sde with
    | Sde.Vp s
    | Sde.SubVp s ->
        let logA = -0.25 * t * t * (s.BetaMax - s.BetaMin) - 0.5 * t * s.BetaMin
        let v = -(expm1 (2.0 * logA))
        Math.Exp logA, (if Sde.name sde = "vp" then v else v * v)
    | Sde.Ve s -> 1.0, (s.SigmaMin * Math.Pow(s.SigmaMax / s.SigmaMin, t)) ** 2.0

/// The one time of a batch's time tensor. The samplers share a time over the batch, but libtorch may
/// round a time computed for every sample differently in its vectorised body and its scalar tail (one
/// unit in the last place, seen with Dormand-Prince at 200 samples on one thread), so times within four
/// units in the last place of the tensor's dtype count as one.
let sharedTime (t: Tensor) =
    use scope = torch.NewDisposeScope()
    let ts = t.to_type(torch.float64).flatten()
    let tv = ts.[0L].item<float>()
    let ulp = if t.dtype = torch.float64 then 2.2e-16 else 1.2e-7
    let spread = (ts.max().item<float>()) - (ts.min().item<float>())
    if spread > 4.0 * ulp * max 1.0 (abs tv) then
        failwithf "the exact mixture functions expect one time for the whole batch (times spread over %g)" spread
    tv

/// The mixture's parameters as float64 tensors: means [K, D], variances [K, D], log-weights [1, K].
let parameters (m: Mixture) =
    let k, d = int64 m.Modes, int64 m.Dim
    let means = torch.tensor(Array.concat m.Means, dtype = torch.float64).reshape([| k; d |])
    let vars0 = torch.tensor(Array.concat m.Stds |> Array.map (fun s -> s * s), dtype = torch.float64).reshape([| k; d |])
    let logW = torch.tensor(m.Weights |> Array.map Math.Log, dtype = torch.float64).reshape([| 1L; k |])
    means, vars0, logW

/// The exact noise prediction eps(x, t) = -sigma_t grad log p_t(x) of the mixture under an SDE:
/// p_t = sum_k w_k N(alpha_t m_k, alpha_t^2 S_k + sigma_t^2 I), the responsibilities by log-sum-exp.
/// Computed in float64 whatever x's dtype, with its own alpha/sigma formulas (`marginal`).
let noiseModel (sde: Sde) (m: Mixture) : Tensor -> Tensor -> Tensor =
    let k = int64 m.Modes
    let means, vars0, logW = parameters m
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        // the samplers share one time over the batch; the marginal is then the same for every sample
        let a, s2 = marginal sde (sharedTime t)
        let v = vars0 * (a * a) + s2 // [K, D] marginal variances
        let iv = v.reciprocal ()
        let mv = means * iv // m_k / v_k
        let x64 = x.to_type (torch.float64)
        // log N_k(x) up to a constant: -1/2 sum_d (x_d - a m_kd)^2 / v_kd - 1/2 sum_d log v_kd,
        // expanded so that only [B, D] x [D, K] products appear
        let quad =
            (x64 * x64).matmul(iv.t ()) - (x64.matmul (mv.t ())) * (2.0 * a)
            + ((means * mv).sum(1L) * (a * a)).reshape([| 1L; k |])
        let logp = logW - 0.5 * quad - 0.5 * v.log().sum(1L).reshape([| 1L; k |])
        let resp = torch.softmax (logp, 1) // [B, K]
        // score = sum_k resp_k (a m_k - x) / v_k
        let score = resp.matmul (mv) * a - x64 * resp.matmul (iv)
        let eps = score * (-(Math.Sqrt s2))
        eps.to_type(x.dtype).MoveToOuterDisposeScope()
