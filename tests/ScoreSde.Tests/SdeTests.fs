module ScoreSde.Tests.SdeTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = VpSde.standard

[<Tests>]
let properties =
    testList
        "VP-SDE properties"
        [ testPropertyWithConfig propConfig "alpha^2 + sigma^2 = 1 (host, float64)" (fun (SdeParams sde) (Time t) ->
              let a, s = VpSde.alphaAt sde t, VpSde.sigmaAt sde t
              close 1e-14 (a * a + s * s) 1.0 (sprintf "t=%g sde=%A" t sde))

          testPropertyWithConfig propConfig "alpha^2 + sigma^2 = 1 (tensor, float32 and float64)" (fun (SdeParams sde) (Time t) ->
              for dtype, tol in [ torch.float32, 2e-6; torch.float64, 1e-14 ] do
                  use tt = torch.tensor ([| t |], dtype = dtype)
                  use a = VpSde.alpha sde tt
                  use s = VpSde.sigma sde tt
                  close tol (scalar (a * a + s * s)) 1.0 (sprintf "%A t=%g" dtype t))

          testPropertyWithConfig propConfig "sigma strictly increases and lambda strictly decreases in t" (fun (SdeParams sde) (Time t) ->
              let t2 = min 1.0 (t * 1.01 + 1e-6)
              Expect.isLessThan (VpSde.sigmaAt sde t) (VpSde.sigmaAt sde t2) (sprintf "sigma(%g) < sigma(%g)" t t2)
              Expect.isGreaterThan (VpSde.lambdaAt sde t) (VpSde.lambdaAt sde t2) (sprintf "lambda(%g) > lambda(%g)" t t2))

          testPropertyWithConfig propConfig "d/dt log alpha = -beta/2 (central finite differences)" (fun (SdeParams sde) (Time t) ->
              let h = 1e-5 * max t 1e-3
              let fd = (VpSde.logMeanCoeffAt sde (t + h) - VpSde.logMeanCoeffAt sde (t - h)) / (2.0 * h)
              // m is a quadratic, so the central difference is exact up to the rounding of m, ~eps |m| / h.
              let m = abs (VpSde.logMeanCoeffAt sde t)
              close (4.0 * 2.2e-16 * (1.0 + m) / h + 1e-12) fd (-0.5 * VpSde.betaAt sde t) (sprintf "t=%g" t))

          testPropertyWithConfig propConfig "lambda -> t round trip to float64 precision" (fun (SdeParams sde) (Time t) ->
              let back = VpSde.timeOfLambda sde (VpSde.lambdaAt sde t)
              closeRel 1e-11 back t (sprintf "t=%g sde=%A" t sde))

          testPropertyWithConfig propConfig "tensor functions agree with host functions" (fun (SdeParams sde) (Time t) ->
              use tt = torch.tensor ([| t |], dtype = torch.float64)
              closeRel 1e-13 (scalar (VpSde.beta sde tt)) (VpSde.betaAt sde t) "beta"
              closeRel 1e-13 (scalar (VpSde.alpha sde tt)) (VpSde.alphaAt sde t) "alpha"
              closeRel 1e-12 (scalar (VpSde.sigma sde tt)) (VpSde.sigmaAt sde t) "sigma"
              close 1e-10 (scalar (VpSde.lambda sde tt)) (VpSde.lambdaAt sde t) "lambda"
              closeRel 1e-13 (scalar (VpSde.diffusion sde tt)) (Math.Sqrt(VpSde.betaAt sde t)) "diffusion") ]

[<Tests>]
let values =
    testList
        "VP-SDE values"
        [ test "published check values of lambda for (0.1, 20)" {
              close 5e-5 (VpSde.lambdaAt sde 1.0) -5.0250 "lambda(1)"
              close 5e-5 (VpSde.lambdaAt sde 1e-3) 4.5577 "lambda(1e-3)"
          }

          test "sigma is accurate at t = 1e-5 in float32 (expm1, not 1 - exp)" {
              // float64 reference: m = -0.5 * 0.1 * 1e-5 - 0.25 * 19.9 * 1e-10; sigma^2 = -expm1(2m) ~ -2m
              let m = -0.5 * 0.1 * 1e-5 - 0.25 * 19.9 * 1e-10
              let exact = Math.Sqrt(-2.0 * m - 2.0 * m * m - 4.0 / 3.0 * m * m * m)
              use t = torch.tensor ([| 1e-5f |])
              use s = VpSde.sigma sde t
              closeRel 1e-6 (scalar s) exact "sigma(1e-5) float32"
              closeRel 1e-12 (VpSde.sigmaAt sde 1e-5) exact "sigma(1e-5) host"
          }

          test "drift, diffusion, reverse drift and probability-flow drift by hand" {
              use x = torch.tensor([| 1.0; -2.0; 0.5; 3.0 |], dtype = torch.float64).reshape(2L, 2L)
              use s = torch.tensor([| 0.3; 0.1; -0.2; 0.7 |], dtype = torch.float64).reshape(2L, 2L)
              use t = torch.tensor ([| 0.25; 0.75 |], dtype = torch.float64)
              let b = [| 0.1 + 0.25 * 19.9; 0.1 + 0.75 * 19.9 |]
              let xs, ss = [| 1.0; -2.0; 0.5; 3.0 |], [| 0.3; 0.1; -0.2; 0.7 |]
              let bi i = b.[i / 2]
              let f = VpSde.drift sde x t |> Common.values
              let rev = VpSde.reverseDrift sde s x t |> Common.values
              let pf = VpSde.probabilityFlowDrift sde s x t |> Common.values
              for i in 0..3 do
                  close 1e-12 f.[i] (-0.5 * bi i * xs.[i]) (sprintf "drift[%d]" i)
                  close 1e-12 rev.[i] (-0.5 * bi i * xs.[i] - bi i * ss.[i]) (sprintf "reverse drift[%d]" i)
                  close 1e-12 pf.[i] (-0.5 * bi i * (xs.[i] + ss.[i])) (sprintf "probability-flow drift[%d]" i)
          }

          test "prior log-density by hand" {
              use z = torch.tensor([| 0.0; 0.0; 1.0; 2.0 |], dtype = torch.float64).reshape(2L, 2L)
              let lp = VpSde.priorLogp z |> Common.values
              close 1e-12 lp.[0] (-Math.Log(2.0 * Math.PI)) "logp(0)"
              close 1e-12 lp.[1] (-Math.Log(2.0 * Math.PI) - 2.5) "logp(1, 2)"
          }

          test "DDPM discretisation: values, and rejection where the paper's code gives NaN" {
              let d = VpSde.discretise sde 1000
              close 1e-15 d.Betas.[0] (0.1 / 1000.0) "beta_0"
              close 1e-15 d.Betas.[999] (20.0 / 1000.0) "beta_N-1"
              close 1e-15 d.Alphas.[500] (1.0 - d.Betas.[500]) "alpha_i"
              Expect.equal (VpSde.ddpmIndex sde 1000 1.0) 999 "index of t = 1"
              Expect.equal (VpSde.ddpmIndex sde 1000 0.5) 499 "index of t = 0.5"
              let e = throwsOf<ArgumentException> "N = 20" (fun () -> VpSde.discretise sde 20 |> ignore)
              Expect.equal e.ParamName "n" "names n"
              Expect.stringContains e.Message "BetaMax" "says why 20 steps are refused"
              VpSde.discretise sde 21 |> ignore
              Expect.throwsT<ArgumentException> (fun () -> VpSde.discretise sde 0 |> ignore) "N = 0"
          }

          test "interval beta is in (0, 1) for any step and matches beta(t) dt for small steps" {
              for (t, s) in [ 1.0, 0.0; 1.0, 0.9; 0.5, 0.4999; 1e-3, 1e-5 ] do
                  let b = VpSde.intervalBeta sde t s
                  Expect.isTrue (b > 0.0 && b < 1.0) (sprintf "interval beta(%g, %g) = %g" t s b)
              let dt = 1e-4
              closeRel 1e-3 (VpSde.intervalBeta sde 0.5 (0.5 - dt)) (VpSde.betaAt sde 0.5 * dt) "small step"
          }

          test "invalid parameters are rejected with the parameter's name" {
              for f, name in
                  [ (fun () -> VpSde.create 0.0 20.0), "betaMin"
                    (fun () -> VpSde.create -1.0 20.0), "betaMin"
                    (fun () -> VpSde.create nan 20.0), "betaMin"
                    (fun () -> VpSde.create 1.0 0.5), "betaMax"
                    (fun () -> VpSde.create 0.1 infinity), "betaMax" ] do
                  try
                      f () |> ignore
                      failtestf "expected an exception for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name "parameter name"
                      Expect.stringContains e.Message name "message names the parameter"
          } ]

[<Tests>]
let stochastic =
    testList
        "VP-SDE marginals (Monte Carlo)"
        [ test "perturb has the closed-form moments" {
              let seed = 1234L
              use g = generator seed
              let n = 200000L
              use x0 = (full [| n; 1L |] (2.0) torch.float64)
              let t = 0.3
              use z = torch.randn ([| n; 1L |], dtype = torch.float64, generator = g)
              use tt = torch.tensor (t, dtype = torch.float64)
              use xt = VpSde.perturb sde x0 tt z
              let m, s = moments xt
              let a, sg = VpSde.alphaAt sde t, VpSde.sigmaAt sde t
              // 5 standard errors of the mean and of the std
              close (5.0 * sg / sqrt (float n)) m.[0] (2.0 * a) (sprintf "mean (seed %d)" seed)
              close (5.0 * sg / sqrt (2.0 * float n)) s.[0] sg (sprintf "std (seed %d)" seed)
          }

          test "the forward SDE simulated by Euler-Maruyama matches the closed-form marginal" {
              let seed = 99L
              use g = generator seed
              let n = 100000L
              let steps = 1000
              let tEnd = 0.6
              let dt = tEnd / float steps
              use x = (full [| n |] (1.5) torch.float64)
              use z = torch.empty ([| n |], dtype = torch.float64)
              for i in 0 .. steps - 1 do
                  let t = float i * dt
                  let b = VpSde.betaAt sde t
                  z.normal_ (0.0, 1.0, g) |> ignore
                  // x <- x + f dt + g sqrt(dt) z, f = -beta x / 2
                  x.mul_(sc (1.0 - 0.5 * b * dt)).add_(z, sc (sqrt (b * dt))) |> ignore
              let m, s = moments (x.reshape (-1L, 1L))
              let a, sg = VpSde.alphaAt sde tEnd, VpSde.sigmaAt sde tEnd
              // Euler-Maruyama's weak error is O(dt) (~1e-3 relative here) plus 5 standard errors
              close (5.0 * sg / sqrt (float n) + 2e-3) m.[0] (1.5 * a) (sprintf "mean (seed %d)" seed)
              close (5.0 * sg / sqrt (2.0 * float n) + 2e-3) s.[0] sg (sprintf "std (seed %d)" seed)
          } ]

[<Tests>]
let fromModel =
    testList
        "Reverse-time drifts from a model"
        [ test "reverse SDE and probability-flow drifts from a noise model match the hand formulas" {
              // Gaussian data: score = -(x - a mu) / v, written here by hand for one dimension.
              let g = { Mu = [| 0.7 |]; S = [| 0.4 |] }
              let model = Model.noise (gaussianNoiseModel sde g)
              use x = torch.tensor([| -1.0; 0.5; 2.0 |], dtype = torch.float64).reshape(3L, 1L)
              use t = torch.tensor ([| 0.1; 0.5; 0.9 |], dtype = torch.float64)
              let rev = Model.reverseDrift sde model x t |> Common.values
              let pf = Model.probabilityFlowDrift sde model x t |> Common.values
              let xs, ts = [| -1.0; 0.5; 2.0 |], [| 0.1; 0.5; 0.9 |]
              for i in 0..2 do
                  let m, v = g.MarginalAt sde ts.[i] 0
                  let s = -(xs.[i] - m) / v
                  let b = 0.1 + 19.9 * ts.[i]
                  close 1e-10 rev.[i] (-0.5 * b * xs.[i] - b * s) (sprintf "reverse drift[%d]" i)
                  close 1e-10 pf.[i] (-0.5 * b * xs.[i] - 0.5 * b * s) (sprintf "probability-flow drift[%d]" i)
          } ]

[<Tests>]
let ownership =
    testList
        "VP-SDE tensor functions leave the caller's tensors alone"
        [ test "a 0-d time tensor survives every tensor function (not disposed, not modified)" {
              use t = torch.tensor (0.4, dtype = torch.float64)
              use x = torch.ones ([| 3L; 2L |], dtype = torch.float64)
              use z = torch.zeros ([| 3L; 2L |], dtype = torch.float64)
              let results =
                  [ VpSde.beta sde t
                    VpSde.alpha sde t
                    VpSde.sigma sde t
                    VpSde.lambda sde t
                    VpSde.drift sde x t
                    VpSde.diffusion sde t
                    VpSde.perturb sde x t z
                    VpSde.reverseDrift sde z x t
                    VpSde.probabilityFlowDrift sde z x t
                    fst (VpSde.marginal sde x t)
                    snd (VpSde.marginal sde x t) ]
              Expect.isFalse t.IsInvalid "t not disposed"
              close 0.0 (scalar t) 0.4 "t unchanged"
              Expect.isFalse x.IsInvalid "x not disposed"
              close 0.0 (scalar (x.sum ())) 6.0 "x unchanged"
              for r in results do
                  r.Dispose()
          } ]
