module ScoreSde.Tests.SdeTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp

/// Central finite difference of a host function (step h relative to t).
let private derivative (f: float -> float) (t: float) (h: float) = (f (t + h) - f (t - h)) / (2.0 * h)

[<Tests>]
let properties =
    testList
        "SDE properties (VP, sub-VP, VE)"
        [ testPropertyWithConfig propConfig "alpha and sigma are the paper's formulas (host, float64)" (fun (SdeParams sde) (Time t) ->
              let a, s = marginalCoefficients sde t
              closeRel 1e-13 (Sde.alphaAt sde t) a (sprintf "alpha t=%g %A" t sde)
              // the naive 1 - e^(2m) of the reference loses ~1e-16 / sigma^2 relative near t = 0
              closeRel (1e-12 + 1e-15 / (s * s)) (Sde.sigmaAt sde t) s (sprintf "sigma t=%g %A" t sde))

          testPropertyWithConfig
              propConfig
              "the invariant of each SDE: VP alpha^2 + sigma^2 = 1, sub-VP sigma = 1 - alpha^2, VE alpha = 1"
              (fun (SdeParams sde) (Time t) ->
                  let a, s = Sde.alphaAt sde t, Sde.sigmaAt sde t
                  match sde with
                  | Sde.Vp _ -> close 1e-14 (a * a + s * s) 1.0 (sprintf "t=%g sde=%A" t sde)
                  | Sde.SubVp _ -> close 1e-14 s (1.0 - a * a) (sprintf "t=%g sde=%A" t sde)
                  | Sde.Ve v ->
                      Expect.equal a 1.0 "alpha"
                      closeRel 1e-13 s (v.SigmaMin * (v.SigmaMax / v.SigmaMin) ** t) (sprintf "t=%g sde=%A" t sde))

          testPropertyWithConfig
              propConfig
              "the invariants hold for the tensor functions in float32 and float64"
              (fun (SdeParams sde) (Time t) ->
                  // float32: VP and sub-VP 2e-6 (a few ulps of alpha^2 and expm1); VE's exp(log sigma_min + t L)
                  // carries the rounding of its exponent, up to ~18 * 6e-8 relative
                  let f32 = if Sde.name sde = "ve" then 4e-6 else 2e-6
                  for dtype, tol in [ torch.float32, f32; torch.float64, 1e-13 ] do
                      use tt = torch.tensor ([| t |], dtype = dtype)
                      use a = Sde.alpha sde tt
                      use s = Sde.sigma sde tt
                      let av, sv = scalar a, scalar s
                      match sde with
                      | Sde.Vp _ -> close tol (av * av + sv * sv) 1.0 (sprintf "%A t=%g" dtype t)
                      | Sde.SubVp _ -> close tol sv (1.0 - av * av) (sprintf "%A t=%g" dtype t)
                      | Sde.Ve _ -> closeRel tol sv (Sde.sigmaAt sde (values tt).[0]) (sprintf "%A t=%g" dtype t))

          testPropertyWithConfig propConfig "sigma strictly increases and lambda strictly decreases in t" (fun (SdeParams sde) (Time t) ->
              let t2 = min 1.0 (t * 1.01 + 1e-6)
              Expect.isLessThan (Sde.sigmaAt sde t) (Sde.sigmaAt sde t2) (sprintf "sigma(%g) < sigma(%g)" t t2)
              Expect.isGreaterThan (Sde.lambdaAt sde t) (Sde.lambdaAt sde t2) (sprintf "lambda(%g) > lambda(%g)" t t2))

          testPropertyWithConfig
              propConfig
              "f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 (finite differences)"
              (fun (SdeParams sde) (Time t) ->
                  // The marginals N(alpha x0, sigma^2) solve the SDE's moment equations exactly when these hold.
                  // A central difference with h = 1e-5 t has relative truncation error ~h^2 |f'''| / (6 |f'|), below
                  // 1e-8 here (VE's variance grows like e^(2 L t) with L <= 11.5), and rounding error ~1e-16 / h.
                  let t = min t 0.999
                  let h = 1e-5 * t
                  let tol scale = 1e-6 * scale + 4e-16 * scale / h + 1e-12
                  let dLogAlpha = derivative (Sde.alphaAt sde >> log) t h
                  close (tol (abs (Sde.driftAt sde t) + 1.0)) (Sde.driftAt sde t) dLogAlpha (sprintf "f t=%g %A" t sde)
                  let dVar = derivative (Sde.varianceAt sde) t h
                  let g2 = dVar - 2.0 * Sde.driftAt sde t * Sde.varianceAt sde t
                  closeRel 1e-6 (Sde.diffusionSquaredAt sde t) g2 (sprintf "g^2 t=%g %A" t sde))

          testPropertyWithConfig propConfig "lambda -> t round trip to float64 precision" (fun (SdeParams sde) (Time t) ->
              let back = Sde.timeOfLambda sde (Sde.lambdaAt sde t)
              // VE: t = (-lambda - log sigma_min) / L is a difference, relative error ~eps |log sigma_min| / (t L),
              // up to ~1e-10 on the generated range (t >= 1e-4, L >= log 2)
              let tol = if Sde.name sde = "ve" then 1e-10 else 1e-11
              closeRel tol back t (sprintf "t=%g sde=%A" t sde))

          testPropertyWithConfig
              propConfig
              "the transition from s to t composes the marginals: a = alpha_t / alpha_s, v = sigma_t^2 - a^2 sigma_s^2"
              (fun (SdeParams sde) (Time t) ->
                  let s = t * 0.7
                  let a, v = Sde.transitionAt sde t s
                  let at, st = marginalCoefficients sde t
                  let as', ss = marginalCoefficients sde s
                  closeRel 1e-12 a (at / as') (sprintf "a t=%g %A" t sde)
                  // the reference subtracts two variances made with 1 - e^(2m): its own error is ~1e-16 absolute
                  close (1e-10 * v + 1e-15 * (1.0 + st * st)) v (st * st - (at / as') ** 2.0 * ss * ss) (sprintf "v t=%g %A" t sde)
                  Expect.isGreaterThan v 0.0 "positive variance")

          testPropertyWithConfig propConfig "tensor functions agree with their host twins (float64)" (fun (SdeParams sde) (Time t) ->
              use tt = torch.tensor ([| t |], dtype = torch.float64)
              closeRel 1e-13 (scalar (Sde.alpha sde tt)) (Sde.alphaAt sde t) "alpha"
              closeRel 1e-12 (scalar (Sde.sigma sde tt)) (Sde.sigmaAt sde t) "sigma"
              closeRel 1e-12 (scalar (Sde.variance sde tt)) (Sde.varianceAt sde t) "variance"
              close (1e-12 * (1.0 + abs (Sde.lambdaAt sde t))) (scalar (Sde.lambda sde tt)) (Sde.lambdaAt sde t) "lambda"
              close 1e-13 (scalar (Sde.driftCoefficient sde tt)) (Sde.driftAt sde t) "f"
              closeRel 1e-12 (scalar (Sde.diffusionSquared sde tt)) (Sde.diffusionSquaredAt sde t) "g^2"
              closeRel 1e-12 (scalar (Sde.diffusion sde tt)) (sqrt (Sde.diffusionSquaredAt sde t)) "g"
              let f, c = Sde.probabilityFlowAt sde t
              let ft, ct = Sde.probabilityFlowCoefficients sde tt
              use ft = ft
              use ct = ct
              close 1e-13 (scalar ft) f "flow f"
              closeRel 1e-12 (scalar ct) c "flow c") ]

[<Tests>]
let values =
    testList
        "SDE values"
        [ test "published check values of lambda for the VP-SDE (0.1, 20)" {
              close 5e-5 (Sde.lambdaAt sde 1.0) -5.0250 "lambda(1)"
              close 5e-5 (Sde.lambdaAt sde 1e-3) 4.5577 "lambda(1e-3)"
          }

          test "sigma is accurate at t = 1e-5 in float32 (expm1, not 1 - exp)" {
              // float64 reference: m = -0.5 * 0.1 * 1e-5 - 0.25 * 19.9 * 1e-10; sigma^2 = -expm1(2m) ~ -2m
              let m = -0.5 * 0.1 * 1e-5 - 0.25 * 19.9 * 1e-10
              let vp = -2.0 * m - 2.0 * m * m - 4.0 / 3.0 * m * m * m
              use t = torch.tensor ([| 1e-5f |])
              use s = Sde.sigma sde t
              closeRel 1e-6 (scalar s) (Math.Sqrt vp) "VP sigma(1e-5) float32"
              closeRel 1e-12 (Sde.sigmaAt sde 1e-5) (Math.Sqrt vp) "VP sigma(1e-5) host"
              use ss = Sde.sigma Sde.standardSubVp t
              closeRel 1e-6 (scalar ss) vp "sub-VP sigma(1e-5) float32"
              closeRel 1e-12 (Sde.sigmaAt Sde.standardSubVp 1e-5) vp "sub-VP sigma(1e-5) host"
          }

          test "drift, diffusion, reverse drift and probability-flow drift by hand (VP and VE)" {
              use x = torch.tensor([| 1.0; -2.0; 0.5; 3.0 |], dtype = torch.float64).reshape(2L, 2L)
              use s = torch.tensor([| 0.3; 0.1; -0.2; 0.7 |], dtype = torch.float64).reshape(2L, 2L)
              use t = torch.tensor ([| 0.25; 0.75 |], dtype = torch.float64)
              let xs, ss, ts = [| 1.0; -2.0; 0.5; 3.0 |], [| 0.3; 0.1; -0.2; 0.7 |], [| 0.25; 0.75 |]
              let ve = Sde.standardVe
              // (f(t), g(t)^2) by hand: VP f = -beta / 2, g^2 = beta; VE f = 0, g^2 = 2 log(5000) sigma^2
              for sde, coefficients in
                  [ sde, (fun t -> let b = 0.1 + 19.9 * t in -0.5 * b, b)
                    ve, (fun t -> 0.0, 2.0 * log 5000.0 * (0.01 * 5000.0 ** t) ** 2.0) ] do
                  let f = Sde.drift sde x t |> Common.values
                  let rev = Sde.reverseDrift sde s x t |> Common.values
                  let pf = Sde.probabilityFlowDrift sde s x t |> Common.values
                  for i in 0..3 do
                      let fi, g2 = coefficients ts.[i / 2]
                      let tol = 1e-12 * (1.0 + g2)
                      close tol f.[i] (fi * xs.[i]) (sprintf "%s drift[%d]" (Sde.name sde) i)
                      close tol rev.[i] (fi * xs.[i] - g2 * ss.[i]) (sprintf "%s reverse drift[%d]" (Sde.name sde) i)
                      close tol pf.[i] (fi * xs.[i] - 0.5 * g2 * ss.[i]) (sprintf "%s probability-flow drift[%d]" (Sde.name sde) i)
          }

          test "prior log-density by hand: N(0, I) and VE's N(0, sigma_max^2 I)" {
              use z = torch.tensor([| 0.0; 0.0; 1.0; 2.0 |], dtype = torch.float64).reshape(2L, 2L)
              let lp = Sde.priorLogp sde z |> Common.values
              close 1e-12 lp.[0] (-Math.Log(2.0 * Math.PI)) "logp(0)"
              close 1e-12 lp.[1] (-Math.Log(2.0 * Math.PI) - 2.5) "logp(1, 2)"
              let ve = Sde.priorLogp Sde.standardVe z |> Common.values
              close 1e-12 ve.[1] (-Math.Log(2.0 * Math.PI * 2500.0) - 2.5 / 2500.0) "VE logp(1, 2)"
              use g = generator 3L
              use draw = Sampler.prior Sde.standardVe [| 20000L; 2L |] torch.float64 torch.CPU (Noise.fromGenerator g)
              let _, std = moments draw
              for d in 0..1 do
                  closeRel (5.0 / sqrt 40000.0) std.[d] 50.0 (sprintf "VE prior std, dim %d (seed 3)" d)
          }

          test "DDPM discretisation: values, and rejection where the paper's code gives NaN" {
              let d = VpSchedule.discretise VpSchedule.standard 1000
              close 1e-15 d.Betas.[0] (0.1 / 1000.0) "beta_0"
              close 1e-15 d.Betas.[999] (20.0 / 1000.0) "beta_N-1"
              close 1e-15 d.Alphas.[500] (1.0 - d.Betas.[500]) "alpha_i"
              Expect.equal (VpSchedule.ddpmIndex 1000 1.0) 999 "index of t = 1"
              Expect.equal (VpSchedule.ddpmIndex 1000 0.5) 499 "index of t = 0.5"
              let e = throwsOf<ArgumentException> "N = 20" (fun () -> VpSchedule.discretise VpSchedule.standard 20 |> ignore)
              Expect.equal e.ParamName "n" "names n"
              Expect.stringContains e.Message "BetaMax" "says why 20 steps are refused"
              VpSchedule.discretise VpSchedule.standard 21 |> ignore
              Expect.throwsT<ArgumentException> (fun () -> VpSchedule.discretise VpSchedule.standard 0 |> ignore) "N = 0"
          }

          test "the discretisations: VP's interval beta in (0, 1) ~ beta(t) dt, VE's sigma_t^2 - sigma_s^2, sub-VP's Euler-Maruyama" {
              for (t, s) in [ 1.0, 0.0; 1.0, 0.9; 0.5, 0.4999; 1e-3, 1e-5 ] do
                  let _, b = Sde.discretisationAt sde t s
                  Expect.isTrue (b > 0.0 && b < 1.0) (sprintf "interval beta(%g, %g) = %g" t s b)
              let dt = 1e-4
              closeRel 1e-3 (snd (Sde.discretisationAt sde 0.5 (0.5 - dt))) ((0.1 + 0.5 * 19.9) * dt) "small step"
              let ve = Sde.standardVe
              let sigma t = 0.01 * 5000.0 ** t
              let r, v = Sde.discretisationAt ve 0.6 0.5
              Expect.equal r 1.0 "VE: no drift"
              closeRel 1e-12 v (sigma 0.6 ** 2.0 - sigma 0.5 ** 2.0) "VE: sigma_t^2 - sigma_s^2"
              let sub = Sde.standardSubVp
              let r, v = Sde.discretisationAt sub 0.6 0.5
              let b = 0.1 + 0.6 * 19.9
              let m = -0.25 * 0.36 * 19.9 - 0.05 * 0.6
              closeRel 1e-12 r (1.0 - 0.5 * b * 0.1) "sub-VP: 1 + f dt"
              closeRel 1e-12 v (b * (1.0 - exp (4.0 * m)) * 0.1) "sub-VP: g^2 dt"
          }

          test "invalid parameters are rejected with the parameter's name" {
              for f, name in
                  [ (fun () -> Sde.vp 0.0 20.0), "betaMin"
                    (fun () -> Sde.vp -1.0 20.0), "betaMin"
                    (fun () -> Sde.subVp nan 20.0), "betaMin"
                    (fun () -> Sde.vp 1.0 0.5), "betaMax"
                    (fun () -> Sde.subVp 0.1 infinity), "betaMax"
                    (fun () -> Sde.ve 0.0 50.0), "sigmaMin"
                    (fun () -> Sde.ve 0.01 0.01), "sigmaMax"
                    (fun () -> Sde.ve 0.01 nan), "sigmaMax" ] do
                  try
                      f () |> ignore
                      failtestf "expected an exception for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name "parameter name"
                      Expect.stringContains e.Message name "message names the parameter"
              // a value built without the constructor is checked where it is used
              use x = torch.zeros ([| 2L; 2L |])
              let bad = Sde.Vp { BetaMin = -1.0; BetaMax = 20.0 }
              Expect.throwsT<ArgumentException>
                  (fun () ->
                      Sampler.sample bad (Model.score (fun x _ -> x)) Sampling.flow (Noise.fromSeed 0L torch.CPU) x
                      |> ignore)
                  "unvalidated SDE"
          } ]

[<Tests>]
let stochastic =
    testList
        "SDE marginals (Monte Carlo)"
        [ test "perturb has the closed-form moments" {
              for name, sde in allSdes do
                  let seed = 1234L
                  use g = generator seed
                  let n = 200000L
                  use x0 = (full [| n; 1L |] (2.0) torch.float64)
                  let t = 0.3
                  use z = torch.randn ([| n; 1L |], dtype = torch.float64, generator = g)
                  use tt = torch.tensor (t, dtype = torch.float64)
                  use xt = Sde.perturb sde x0 tt z
                  let m, s = moments xt
                  let a, sg = marginalCoefficients sde t
                  // 5 standard errors of the mean and of the std
                  close (5.0 * sg / sqrt (float n)) m.[0] (2.0 * a) (sprintf "%s mean (seed %d)" name seed)
                  close (5.0 * sg / sqrt (2.0 * float n)) s.[0] sg (sprintf "%s std (seed %d)" name seed)
          }

          test "each forward SDE simulated by Euler-Maruyama matches its closed-form marginal" {
              // x(0) is drawn from the marginal at t = 0 (x0, plus sigma_min noise for VE), then
              // dx = f(t) x dt + g(t) dw is simulated with 2000 Euler-Maruyama steps to t = 0.6. The weak
              // error is O(dt) relative to the moments: for VE, whose variance grows like e^(17 t), the left
              // Riemann sum of g^2 undershoots by ~17 dt / 2 = 0.26%; for VP and sub-VP it is below 0.1%.
              for name, sde in allSdes do
                  let seed = 99L
                  use g = generator seed
                  let n = 100000L
                  let steps = 2000
                  let tEnd = 0.6
                  let dt = tEnd / float steps
                  let a0, s0 = marginalCoefficients sde 0.0
                  use x = torch.randn ([| n |], dtype = torch.float64, generator = g)
                  x.mul_(sc s0).add_(sc (1.5 * a0)) |> ignore
                  use z = torch.empty ([| n |], dtype = torch.float64)
                  for i in 0 .. steps - 1 do
                      let t = float i * dt
                      z.normal_ (0.0, 1.0, g) |> ignore
                      // x <- x + f(t) x dt + g(t) sqrt(dt) z
                      x.mul_(sc (1.0 + Sde.driftAt sde t * dt)).add_(z, sc (sqrt (Sde.diffusionSquaredAt sde t * dt)))
                      |> ignore
                  let m, s = moments (x.reshape (-1L, 1L))
                  let a, sg = marginalCoefficients sde tEnd
                  let bias = 3e-3 * (abs (1.5 * a) + sg)
                  close (5.0 * sg / sqrt (float n) + bias) m.[0] (1.5 * a) (sprintf "%s mean (seed %d)" name seed)
                  close (5.0 * sg / sqrt (2.0 * float n) + bias) s.[0] sg (sprintf "%s std (seed %d)" name seed)
          } ]

[<Tests>]
let fromModel =
    testList
        "Reverse-time drifts from a model"
        [ test "reverse SDE and probability-flow drifts from a noise model match the hand formulas" {
              // Gaussian data: score = -(x - a mu) / v, written here by hand for one dimension.
              let g = { Mu = [| 0.7 |]; S = [| 0.4 |] }
              for name, sde in allSdes do
                  let model = Model.noise (gaussianNoiseModel sde g)
                  use x = torch.tensor([| -1.0; 0.5; 2.0 |], dtype = torch.float64).reshape(3L, 1L)
                  use t = torch.tensor ([| 0.1; 0.5; 0.9 |], dtype = torch.float64)
                  let rev = Model.reverseDrift sde model x t |> Common.values
                  let pf = Model.probabilityFlowDrift sde model x t |> Common.values
                  let xs, ts = [| -1.0; 0.5; 2.0 |], [| 0.1; 0.5; 0.9 |]
                  for i in 0..2 do
                      let m, v = g.MarginalAt sde ts.[i] 0
                      let s = -(xs.[i] - m) / v
                      let f, g2 = Sde.driftAt sde ts.[i], Sde.diffusionSquaredAt sde ts.[i]
                      let tol = 1e-10 * (1.0 + g2)
                      close tol rev.[i] (f * xs.[i] - g2 * s) (sprintf "%s reverse drift[%d]" name i)
                      close tol pf.[i] (f * xs.[i] - 0.5 * g2 * s) (sprintf "%s probability-flow drift[%d]" name i)
          } ]

[<Tests>]
let ownership =
    testList
        "SDE tensor functions leave the caller's tensors alone"
        [ test "a 0-d time tensor survives every tensor function (not disposed, not modified)" {
              for _, sde in allSdes do
                  use t = torch.tensor (0.4, dtype = torch.float64)
                  use x = torch.ones ([| 3L; 2L |], dtype = torch.float64)
                  use z = torch.zeros ([| 3L; 2L |], dtype = torch.float64)
                  let results =
                      [ Sde.alpha sde t
                        Sde.sigma sde t
                        Sde.variance sde t
                        Sde.lambda sde t
                        Sde.driftCoefficient sde t
                        Sde.diffusionSquared sde t
                        Sde.drift sde x t
                        Sde.diffusion sde t
                        Sde.perturb sde x t z
                        Sde.reverseDrift sde z x t
                        Sde.probabilityFlowDrift sde z x t
                        fst (Sde.marginal sde x t)
                        snd (Sde.marginal sde x t) ]
                  Expect.isFalse t.IsInvalid "t not disposed"
                  close 0.0 (scalar t) 0.4 "t unchanged"
                  Expect.isFalse x.IsInvalid "x not disposed"
                  close 0.0 (scalar (x.sum ())) 6.0 "x unchanged"
                  for r in results do
                      r.Dispose()
          } ]
