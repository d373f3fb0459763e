module ScoreSde.Tests.DpmSolverTests

open System
open Expecto
open FsCheck
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let private gauss = PredictorTests.gauss
let private eps = 1e-3

let private d = dpmDefaults
let private algorithms = [ DpmAlgorithm.DpmSolver; DpmAlgorithm.DpmSolverPlusPlus ]
let private fixedMethods = [ DpmMethod.SingleStep; DpmMethod.MultiStep ]

/// Latents for the Gaussian flow tests (float64, seed 4).
let latent () =
    use g = generator 4L
    torch.randn ([| 64L; 4L |], dtype = torch.float64, generator = g)

/// Largest distance of a run's samples to the exact probability-flow map of the Gaussian (from T to eps).
let private flowError (settings: DpmRun) (xT: Tensor) =
    let model = Model.noise (gaussianNoiseModel sde gauss)
    let xs = values xT
    let r = dpmSample sde model settings xT
    let v = values r.Samples
    r.Samples.Dispose()
    v |> Array.mapi (fun i y -> abs (y - OdeSolverTests.exactFlow xs.[i] (i % 4) 1.0 eps)) |> Array.max

/// A model wrapper that counts its calls.
let private spy (f: Tensor -> Tensor -> Tensor) =
    let calls = ref 0
    (fun x t ->
        calls.Value <- calls.Value + 1
        f x t),
    calls

/// Run f and require an ArgumentException whose ParamName is `name`.
let expectParam (name: string) (f: unit -> unit) =
    try
        f ()
        failtestf "expected an ArgumentException naming %s" name
    with :? ArgumentException as e ->
        Expect.equal e.ParamName name (sprintf "parameter named (message: %s)" e.Message)

[<Tests>]
let tests =
    testList
        "DPM-Solver"
        [ test "phi_k matches its closed form and its power series on both sides of the switch" {
              for h in [ -3.0; -0.5; -0.011; -0.009; -1e-6; 1e-6; 0.009; 0.011; 0.5; 3.0 ] do
                  // closed forms in float64 (fine away from 0) and Taylor series (fine near 0)
                  let p1 = Math.Exp h - 1.0
                  let series k =
                      Seq.sum (seq { for j in 1..12 -> Math.Pow(h, float j) / Seq.fold (*) 1.0 (seq { 1.0 .. float (j + k - 1) }) })
                  let expected k =
                      if abs h > 0.1 then
                          match k with
                          | 1 -> p1
                          | 2 -> p1 / h - 1.0
                          | _ -> (p1 - h - h * h / 2.0) / (h * h)
                      else
                          series k
                  for k in 1..3 do
                      closeRel 1e-9 (DpmSolver.phi k h) (expected k) (sprintf "phi_%d(%g)" k h)
          }

          test "single-step budgets are split as in the DPM-Solver paper" {
              Expect.sequenceEqual (DpmSolver.singleStepOrders 3 10) [| 3; 3; 3; 1 |] "10 = 1 mod 3"
              Expect.sequenceEqual (DpmSolver.singleStepOrders 3 11) [| 3; 3; 3; 2 |] "11 = 2 mod 3"
              Expect.sequenceEqual (DpmSolver.singleStepOrders 3 12) [| 3; 3; 3; 2; 1 |] "12 = 0 mod 3"
              Expect.sequenceEqual (DpmSolver.singleStepOrders 2 7) [| 2; 2; 2; 1 |] "odd budget, order 2"
              Expect.sequenceEqual (DpmSolver.singleStepOrders 1 3) [| 1; 1; 1 |] "order 1"
              for order in 1..3 do
                  for budget in 1..40 do
                      let o = DpmSolver.singleStepOrders order budget
                      Expect.equal (Array.sum o) budget (sprintf "order %d budget %d: sum" order budget)
                      Expect.isTrue (o |> Array.forall (fun k -> k >= 1 && k <= order)) "orders within 1..order"
          }

          test "multistep orders warm up and, optionally, lower in the final steps" {
              Expect.sequenceEqual (DpmSolver.multiStepOrders 3 6 true) [| 1; 2; 3; 3; 2; 1 |] "lower-order final"
              Expect.sequenceEqual (DpmSolver.multiStepOrders 3 6 false) [| 1; 2; 3; 3; 3; 3 |] "full order to the end"
              Expect.sequenceEqual (DpmSolver.multiStepOrders 2 1 true) [| 1 |] "one step"
              // the published rule lowers the final orders below 10 steps only; diffusers' below 15
              for steps in [ 8; 9; 10; 15; 20 ] do
                  Expect.equal
                      (DpmSolver.lowersFinalOrders DpmSolver.defaults.LowerOrderFinal steps)
                      (steps < 10)
                      (sprintf "default rule at %d steps" steps)
                  Expect.equal
                      (DpmSolver.lowersFinalOrders (LowerOrderFinal.BelowSteps 15) steps)
                      (steps < 15)
                      (sprintf "diffusers' rule at %d steps" steps)
              Expect.isTrue (DpmSolver.lowersFinalOrders LowerOrderFinal.Always 1000) "always"
              Expect.isFalse (DpmSolver.lowersFinalOrders LowerOrderFinal.Never 2) "never"
          }

          test "each solver converges to the exact Gaussian flow at its order (float64)" {
              use xT = latent ()
              for alg in algorithms do
                  for meth in fixedMethods do
                      for order, third in
                          [ 1, DpmThirdOrder.Published
                            2, DpmThirdOrder.Published
                            3, DpmThirdOrder.Published
                            3, DpmThirdOrder.TaylorExact ] do
                          // no lower-order final steps: a final first-order step would cap the global order at 2
                          let err n =
                              flowError
                                  { d with
                                      Algorithm = alg
                                      Method = meth
                                      Order = order
                                      Steps = n
                                      LowerOrderFinal = LowerOrderFinal.Never
                                      ThirdOrder = third }
                                  xT
                          let n = 96
                          let e1, e2 = err n, err (2 * n)
                          let p = Math.Log(e1 / e2, 2.0)
                          // The theoretical order: 3 for the single-step third-order solvers and the Taylor-exact
                          // multistep one, 2 for the published multistep third-order update (its second
                          // difference is half the Taylor term's). Lower bound: that order less 0.3 for
                          // pre-asymptotic effects (DPM-Solver++3S shows 2.4, 2.75, 2.9 from 48 to 96, 96 to 192,
                          // 192 to 384 steps). The Taylor-exact multistep solvers show about 4 here (the leading
                          // error term is small on this problem), so no upper bound is asserted.
                          let theoretical = if meth = DpmMethod.MultiStep && order = 3 && third = DpmThirdOrder.Published then 2 else order
                          if p < float theoretical - 0.3 then
                              failtestf
                                  "%A %A order %d %A: observed order %.2f (errors %.3g at %d, %.3g at %d steps)"
                                  alg
                                  meth
                                  order
                                  third
                                  p
                                  e1
                                  n
                                  e2
                                  (2 * n)
                          // and the limit is the exact flow (a wrong limit would leave O(1) errors)
                          Expect.isLessThan e2 0.1 (sprintf "%A %A order %d: error at %d steps" alg meth order (2 * n))
          }

          test "the adaptive solvers meet tighter tolerances with more evaluations" {
              use xT = latent ()
              for alg in algorithms do
                  for order in [ 2; 3 ] do
                      let run tol =
                          let f, calls = spy (gaussianNoiseModel sde gauss)
                          let settings =
                              { d with
                                  Algorithm = alg
                                  Order = order
                                  Method = DpmMethod.Adaptive { DpmSolver.adaptiveDefaults with Rtol = tol; Atol = tol } }
                          let r = dpmSample sde (Model.noise f) settings xT
                          Expect.equal r.Nfe calls.Value "reported evaluations = model calls"
                          r.Samples.Dispose()
                          flowError settings xT, r.Nfe
                      let eLoose, nLoose = run 1e-3
                      let eTight, nTight = run 1e-5
                      Expect.isGreaterThan nTight nLoose (sprintf "%A-%d: more evaluations at the tighter tolerance" alg order)
                      Expect.isLessThan
                          eTight
                          (eLoose / 5.0)
                          (sprintf "%A-%d: error %.3g (tol 1e-5) vs %.3g (tol 1e-3)" alg order eTight eLoose)
                      // the accepted local errors are below tol relative to |x| ~ 1; 20 steps or so add up
                      Expect.isLessThan eTight 2e-4 (sprintf "%A-%d: error at tol 1e-5" alg order)
          }

          test "DPM-Solver-1 and DPM-Solver++1 are DDIM" {
              // DDIM's deterministic step, written from its definition: predict x_0 from the noise
              // prediction, then re-noise it to the next time with the same noise.
              let alpha t = Math.Exp(-0.25 * t * t * 19.9 - 0.05 * t)
              let sigma t = Math.Sqrt(1.0 - alpha t ** 2.0)
              let f = gaussianNoiseModel sde gauss
              use xT = latent ()
              let steps = 10
              let ts = TimeGrid.points sde TimeGrid.LogSnr steps eps
              let mutable x = xT.clone ()
              for i in 0 .. steps - 1 do
                  let t, s = ts.[i], ts.[i + 1]
                  use tb = full [| 64L |] t torch.float64
                  use e = f x tb
                  let x0 = (x - e * sigma t) / alpha t
                  let next = x0 * alpha s + e * sigma s
                  x0.Dispose()
                  x.Dispose()
                  x <- next
              let expected = values x
              x.Dispose()
              for alg in algorithms do
                  for meth in fixedMethods do
                      let r = dpmSample sde (Model.noise f) { d with Algorithm = alg; Method = meth; Order = 1; Steps = steps } xT
                      let v = values r.Samples
                      r.Samples.Dispose()
                      // same float64 arithmetic up to reassociation: rounding only
                      for i in 0 .. v.Length - 1 do
                          close 1e-12 v.[i] expected.[i] (sprintf "%A %A element %d" alg meth i)
          }

          test "single-step and multistep agree as the steps grow" {
              use xT = latent ()
              let model = Model.noise (gaussianNoiseModel sde gauss)
              for alg in algorithms do
                  for order in [ 2; 3 ] do
                      let gap n =
                          let run meth =
                              let r = dpmSample sde model { d with Algorithm = alg; Method = meth; Order = order; Steps = n } xT
                              let v = values r.Samples
                              r.Samples.Dispose()
                              v
                          Array.map2 (fun a b -> abs (a - b)) (run DpmMethod.SingleStep) (run DpmMethod.MultiStep)
                          |> Array.max
                      let coarse, fine = gap 24, gap 192
                      Expect.isLessThan
                          fine
                          (coarse / 20.0)
                          (sprintf "%A order %d: gap %.3g at 24 vs %.3g at 192 steps" alg order coarse fine)
                      // the gap is at most the sum of the two errors, each below 2e-3 at 192 steps for
                      // order 2 (see the convergence test) and far below for order 3
                      Expect.isLessThan fine 5e-3 (sprintf "%A order %d: gap at 192 steps" alg order)
          }

          test "a budget of N evaluations uses exactly N model calls" {
              for alg in algorithms do
                  for meth in fixedMethods do
                      for order in 1..3 do
                          for grid in [ TimeGrid.LogSnr; TimeGrid.Uniform; TimeGrid.Quadratic ] do
                              for denoise in [ false; true ] do
                                  for budget in [ 1; 2; 3; 4; 5; 6; 7; 8; 9; 10; 11; 12; 13; 20; 31 ] do
                                      if not (denoise && budget < 2) then
                                          let f, calls = spy (gaussianNoiseModel sde gauss)
                                          use x = torch.zeros ([| 2L; 4L |], dtype = torch.float64)
                                          let settings =
                                              { d with
                                                  Algorithm = alg
                                                  Method = meth
                                                  Order = order
                                                  Grid = grid
                                                  Steps = budget
                                                  Denoise = denoise }
                                          let r = dpmSample sde (Model.noise f) settings x
                                          r.Samples.Dispose()
                                          let what = sprintf "%A %A order %d %A denoise %b budget %d" alg meth order grid denoise budget
                                          Expect.equal calls.Value budget (what + ": model calls")
                                          Expect.equal r.Nfe budget (what + ": reported")
              // an explicit grid: one evaluation per interval, plus the denoising step
              let f, calls = spy (gaussianNoiseModel sde gauss)
              use x = torch.zeros ([| 2L; 4L |], dtype = torch.float64)
              let r =
                  dpmSample
                      sde
                      (Model.noise f)
                      { d with
                          Grid = TimeGrid.Explicit [| 1.0; 0.5; 0.2; 0.05; 0.01 |]
                          Denoise = true
                          Method = DpmMethod.SingleStep }
                      x
              r.Samples.Dispose()
              Expect.equal (calls.Value, r.Nfe) (5, 5) "explicit grid of 4 intervals + denoise"
          }

          test "the observer sees every step, ending at eps; the latent is not modified" {
              use xT = latent ()
              let before = values xT
              let seen = Collections.Generic.List<int * float>()
              let settings = { d with Steps = 12; Method = DpmMethod.SingleStep; Observer = Some(fun i t _ -> seen.Add((i, t))) }
              let r = dpmSample sde (Model.noise (gaussianNoiseModel sde gauss)) settings xT
              r.Samples.Dispose()
              Expect.sequenceEqual (seen |> Seq.map fst) [ 0..4 ] "five outer steps for [3; 3; 3; 2; 1]"
              Expect.equal (snd seen.[seen.Count - 1]) eps "last time"
              Expect.sequenceEqual (values xT) before "latent unchanged"
          }

          test "float32 runs agree with float64 runs to float32 accuracy" {
              use x64 = latent ()
              use x32 = x64.to_type (torch.float32)
              for alg in algorithms do
                  for meth in
                      [ DpmMethod.SingleStep
                        DpmMethod.MultiStep
                        DpmMethod.Adaptive { DpmSolver.adaptiveDefaults with Rtol = 1e-4; Atol = 1e-4 } ] do
                      let settings = { d with Algorithm = alg; Method = meth; Steps = 20 }
                      let model = Model.noise (gaussianNoiseModel sde gauss)
                      let r64 = dpmSample sde model settings x64
                      let r32 = dpmSample sde model settings x32
                      Expect.equal r32.Samples.dtype torch.float32 "dtype kept"
                      let a, b = values r64.Samples, values r32.Samples
                      r64.Samples.Dispose()
                      r32.Samples.Dispose()
                      // float32 rounding (6e-8) through ~20 steps whose maps have gain up to ~1/0.2 per
                      // dimension; 1e-4 leaves a wide margin. The adaptive method may choose other steps
                      // in float32 (its error test sees rounding): both runs are then within ~2e-4 of the
                      // exact flow at tolerance 1e-4 (adaptive test), so they agree to 1e-3.
                      let tol =
                          match meth with
                          | DpmMethod.Adaptive _ -> 1e-3
                          | _ -> 1e-4
                      for i in 0 .. a.Length - 1 do
                          close tol b.[i] a.[i] (sprintf "%A %A element %d" alg meth i)
          }

          test "thresholding clamps the data prediction (static and dynamic)" {
              // a data model returning the constant 3: one DPM-Solver++ first-order step from T to eps gives
              // x = sigma_eps / sigma_T x_T + alpha_eps (1 - e^-h) x0 with x0 the thresholded constant
              let model = Model.data (fun x _ -> torch.full_like (x, sc 3.0))
              use xT = torch.ones ([| 3L; 5L |], dtype = torch.float64)
              let h = Sde.lambdaAt sde eps - Sde.lambdaAt sde 1.0
              let expected x0 = Sde.sigmaAt sde eps / Sde.sigmaAt sde 1.0 + Sde.alphaAt sde eps * (1.0 - Math.Exp(-h)) * x0
              for th, x0 in
                  [ Thresholding.NoThresholding, 3.0
                    Thresholding.Static 1.5, 1.5
                    // quantile 1 of |x0| = 3 > maxValue 2: clamp to 3, scale by 2 / 3
                    Thresholding.Dynamic(1.0, 2.0), 2.0
                    // maxValue above |x0|: unchanged
                    Thresholding.Dynamic(0.5, 4.0), 3.0 ] do
                  let r =
                      dpmSample sde model { d with Algorithm = DpmAlgorithm.DpmSolverPlusPlus; Order = 1; Steps = 1; Thresholding = th } xT
                  for v in values r.Samples do
                      close 1e-12 v (expected x0) (sprintf "%A" th)
                  r.Samples.Dispose()
          }

          test "bad settings are rejected naming the setting" {
              use x = torch.zeros ([| 2L; 4L |])
              let model = Model.noise (gaussianNoiseModel sde gauss)
              let run s = dpmSample sde model s x |> fun r -> r.Samples.Dispose()
              let adaptive = DpmSolver.adaptiveDefaults
              try
                  run { d with Order = 4 }
                  failtest "order 4 accepted"
              with :? ArgumentOutOfRangeException as e ->
                  Expect.equal e.ParamName "order" "order named"
                  Expect.stringContains e.Message "4" "value in the message"
              expectParam "order" (fun () -> run { d with Order = 0 })
              expectParam "order" (fun () -> run { d with Order = 1; Method = DpmMethod.Adaptive adaptive })
              expectParam "steps" (fun () -> run { d with Steps = 0 })
              expectParam "steps" (fun () -> run { d with Steps = 1; Denoise = true })
              expectParam "eps" (fun () -> run { d with Eps = 0.0 })
              expectParam "eps" (fun () -> run { d with Eps = nan; Method = DpmMethod.Adaptive adaptive })
              expectParam "grid[1]" (fun () -> run { d with Grid = TimeGrid.Explicit [| 1.0; 1.0 |] })
              expectParam "grid" (fun () -> run { d with Grid = TimeGrid.Explicit [| 1.0; 0.1 |]; Method = DpmMethod.Adaptive adaptive })
              expectParam "rtol" (fun () -> run { d with Method = DpmMethod.Adaptive { adaptive with Rtol = -1.0 } })
              expectParam "atol" (fun () -> run { d with Method = DpmMethod.Adaptive { adaptive with Rtol = 0.0; Atol = 0.0 } })
              expectParam "safety" (fun () -> run { d with Method = DpmMethod.Adaptive { adaptive with Safety = 1.5 } })
              expectParam "maxEvaluations" (fun () -> run { d with Method = DpmMethod.Adaptive { adaptive with MaxEvaluations = 0 } })
              expectParam "thresholding" (fun () ->
                  run { d with Algorithm = DpmAlgorithm.DpmSolver; Thresholding = Thresholding.Static 1.0 })
              expectParam "thresholding.quantile" (fun () ->
                  run { d with Algorithm = DpmAlgorithm.DpmSolverPlusPlus; Thresholding = Thresholding.Dynamic(1.5, 1.0) })
              expectParam "lowerOrderFinal.belowSteps" (fun () -> run { d with LowerOrderFinal = LowerOrderFinal.BelowSteps 0 })
              expectParam "xT" (fun () -> dpmSample sde model d (torch.zeros ([| 2L |], dtype = torch.int32)) |> ignore)
              // the evaluation cap of the adaptive method is an error, not a silent early stop
              Expect.throwsT<InvalidOperationException>
                  (fun () ->
                      run
                          { d with
                              Method = DpmMethod.Adaptive { adaptive with Rtol = 1e-9; Atol = 1e-9; MaxEvaluations = 30 } })
                  "evaluation cap"
          } ]
