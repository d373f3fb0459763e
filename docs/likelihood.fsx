// Exact log-likelihoods and bits/dim through the probability-flow ODE.
//
// Run from the repository root after a Release build (the test command builds it):
//   dotnet fsi docs/likelihood.fsx
// The test pipeline executes this script, so it cannot rot; it checks its own results.

#r "../src/ScoreSde/bin/Release/net10.0/TorchSharp.dll"
#r "../src/ScoreSde/bin/Release/net10.0/ScoreSde.dll"

open System
open TorchSharp
open ScoreSde

Native.ensureLoaded ()

// 1. A toy model with a known answer: 2-D Gaussian data N(mu, diag(s^2)). Every marginal p_t is
//    Gaussian, N(alpha_t mu, alpha_t^2 s^2 + sigma_t^2), so the exact score is closed-form. A trained
//    network goes here instead; the likelihood needs it to be differentiable in x (gradients are
//    switched on around each call).
let sde = Sde.standardVp
let mu, s = [| 0.5; -1.0 |], [| 0.3; 0.8 |]
let exactScore (x: torch.Tensor) (t: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let tc = t.reshape (-1L, 1L)
    let a = Sde.alpha sde tc
    let var = a * a * torch.tensor (s |> Array.map (fun v -> v * v), dtype = x.dtype) + Sde.variance sde tc
    (-(x - a * torch.tensor (mu, dtype = x.dtype)) / var).MoveToOuterDisposeScope()
let model = Model.score exactScore

// 2. Data: four points, float64.
let data = torch.tensor([| 0.4; -0.9; 0.9; -0.2; 0.1; -2.0; 0.55; -1.1 |], dtype = torch.float64).reshape(4L, 2L)

// 3. log p(x) per sample: integrate [x, delta log p] from eps = 1e-5 to 1 with adaptive
//    Dormand-Prince 5(4) (rtol = atol = 1e-5, one step size per sample) and the exact divergence.
//    For continuous data the dequantisation offset is 0; for 8-bit images scaled to [-1, 1] it is 7.
let settings = { Likelihood.defaults with DequantizationOffset = 0.0 }
let noise = Noise.fromSeed 0L torch.CPU // used only by the Hutchinson estimator below
let result = Likelihood.compute sde model settings noise data
let logp = result.LogLikelihood.data<float>().ToArray()
let bpd = result.BitsPerDim.data<float>().ToArray()
printfn "exact divergence, %d model evaluations" result.Nfe
for i in 0..3 do
    printfn "  x[%d]: log p = %.5f nats, %.5f bits/dim" i logp.[i] bpd.[i]

// 4. Check against the closed form. The ODE transports the prior N(0, I) at t = 1 to t = eps along
//    the exact flow, which for Gaussian data is linear in each dimension:
//    x_1 = m_1 + sqrt(v_1 / v_eps) (x - m_eps), with m_t = alpha_t mu and v_t = alpha_t^2 s^2 + sigma_t^2.
//    The model's density at x is therefore log N(x_1; 0, I) + 1/2 sum log(v_1 / v_eps).
let closedForm (x: float[]) =
    let marginal t d = let a = Sde.alphaAt sde t in a * mu.[d], a * a * s.[d] * s.[d] + Sde.varianceAt sde t
    [ 0..1 ]
    |> List.sumBy (fun d ->
        let m0, v0 = marginal 1e-5 d
        let m1, v1 = marginal 1.0 d
        let x1 = m1 + sqrt (v1 / v0) * (x.[d] - m0)
        -0.5 * log (2.0 * Math.PI) - 0.5 * x1 * x1 + 0.5 * log (v1 / v0))
let xs = data.data<float>().ToArray()
for i in 0..3 do
    let expected = closedForm [| xs.[2 * i]; xs.[2 * i + 1] |]
    if abs (logp.[i] - expected) > 1e-3 then
        failwithf "x[%d]: log p %.6f differs from the closed form %.6f" i logp.[i] expected
    if abs (bpd.[i] - (-logp.[i] / (2.0 * log 2.0))) > 1e-12 then
        failwithf "x[%d]: bits/dim inconsistent" i
printfn "matches the closed-form density to 1e-3 nats"

// 5. For high-dimensional data the exact trace costs one backward pass per dimension; Hutchinson's
//    estimator costs one per probe and is unbiased. Replicate x[0] 400 times, one Gaussian probe each:
//    the estimates scatter around the exact value.
let replicated = data.narrow(0L, 0L, 1L).expand(400L, 2L).contiguous()
let hutch =
    Likelihood.compute sde model { settings with Divergence = Divergence.Hutchinson(Probe.Gaussian, 1) } noise replicated
let estimates = hutch.LogLikelihood.data<float>().ToArray()
let mean = Array.average estimates
let sd = sqrt ((estimates |> Array.sumBy (fun v -> (v - mean) ** 2.0)) / float (estimates.Length - 1))
printfn "Hutchinson (Gaussian probes): mean of 400 estimates %.4f +- %.4f (exact %.4f)" mean (sd / sqrt 400.0) logp.[0]
if abs (mean - logp.[0]) > 4.5 * sd / sqrt 400.0 + 1e-3 then
    failwith "Hutchinson's mean is off the exact value"
