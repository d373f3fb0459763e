module ScoreSde.Tests.AdaptiveOdeTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let private gauss = PredictorTests.gauss

/// x' = -2 t x (batch-shared rate); exact solution x(t) = x(t0) exp(t0^2 - t^2).
let private decay: TimeField = fun x t -> x * (t.reshape ([| -1L; 1L |]) * -2.0)

/// x' = -lambda_b x with one rate per sample (lambda is [B, 1]).
let private linear (lambda: Tensor) : TimeField = fun x _ -> -(x * lambda)

let private settings tol control = { AdaptiveOde.defaults with Rtol = tol; Atol = tol; Control = control }

let private maxAbsDiff (a: float[]) (b: float[]) = Array.map2 (fun x y -> abs (x - y)) a b |> Array.max

/// Least-squares slope of log(err) against log(tol).
let private logSlope (tols: float[]) (errs: float[]) =
    let xs, ys = Array.map log tols, Array.map log errs
    let mx, my = Array.average xs, Array.average ys
    Array.map2 (fun x y -> (x - mx) * (y - my)) xs ys
    |> Array.sum
    |> fun num -> num / (xs |> Array.sumBy (fun x -> (x - mx) ** 2.0))

let private expectArg name f =
    try
        f () |> ignore
        failtestf "expected an ArgumentException for %s" name
    with :? ArgumentException as e ->
        Expect.equal e.ParamName name (sprintf "parameter %s" name)

let private expectInvalid (fragment: string) f =
    try
        f () |> ignore
        failtestf "expected an InvalidOperationException mentioning '%s'" fragment
    with :? InvalidOperationException as e ->
        Expect.stringContains e.Message fragment "error message"

[<Tests>]
let tests =
    testList
        "Adaptive ODE solver (Dormand-Prince 5(4))"
        [ test "the tableau satisfies the order conditions (independent host arithmetic)" {
              let c, a, b, bh = Dopri5.nodes, Dopri5.coupling, Dopri5.weights5, Dopri5.weights4
              for i in 1..6 do
                  close 1e-14 (Array.sum a.[i]) c.[i] (sprintf "row %d sums to c" i)
              // order 5 (quadrature conditions sum b c^k = 1 / (k + 1), k = 0..4) and order 4 for the embedded pair
              for k in 0..4 do
                  close 1e-14 (Array.map2 (fun bi ci -> bi * ci ** float k) b c |> Array.sum) (1.0 / float (k + 1)) (sprintf "b c^%d" k)
              for k in 0..3 do
                  close 1e-14 (Array.map2 (fun bi ci -> bi * ci ** float k) bh c |> Array.sum) (1.0 / float (k + 1)) (sprintf "b* c^%d" k)
              // sum_i b_i sum_j a_ij c_j = 1/6 and sum b_i c_i sum_j a_ij c_j = 1/8 (two of the tree conditions)
              let ac i = Array.mapi (fun j aij -> aij * c.[j]) a.[i] |> Array.sum
              close 1e-14 (Array.init 6 (fun i -> b.[i] * ac i) |> Array.sum) (1.0 / 6.0) "b A c"
              close 1e-14 (Array.init 6 (fun i -> b.[i] * c.[i] * ac i) |> Array.sum) (1.0 / 8.0) "b (c * A c)"
              // FSAL: the last row of A is b
              Expect.sequenceEqual a.[6] (Array.sub b 0 6) "last stage at the new state"
          }

          test "batch-global control reproduces scipy's RK45 (nfev, steps, error) on x' = -2 t x" {
              // From tests/ScoreSde.Tests/fixtures/make_rk45_reference.py (scipy 1.10.1): tol, nfev, accepted
              // steps, max error. Same algorithm, independent implementation: counts must agree exactly and
              // the errors to rounding (relative 1e-6 leaves room for the order of floating-point sums).
              let reference =
                  [ 1e-3, 62, 8, 0.00016812235612349846
                    1e-5, 98, 13, 6.134614311974207e-06
                    1e-7, 152, 23, 4.8716401801485176e-08
                    1e-9, 338, 52, 4.439322243143806e-10 ]
              use x0 = torch.tensor([| 1.0; -0.5; 2.0; 3.0 |], dtype = torch.float64).reshape(1L, 4L)
              for tol, nfev, accepted, err in reference do
                  let r = AdaptiveOde.integrate (settings tol StepControl.BatchGlobal) decay x0 0.0 2.0
                  use x = r.State
                  Expect.equal r.Nfe nfev (sprintf "nfev at tol %g" tol)
                  Expect.equal r.Accepted.[0] accepted (sprintf "accepted steps at tol %g" tol)
                  Expect.equal r.Nfe (2 + 6 * r.Steps) "f0 + initial-step probe + 6 per attempted step"
                  let e = maxAbsDiff (values x) (values x0 |> Array.map (fun v -> v * exp -4.0))
                  closeRel 1e-6 e err (sprintf "error at tol %g" tol)
          }

          test "global error tracks the tolerance on x' = -2 t x, forwards and backwards (float64)" {
              use x0 = torch.tensor([| 1.0; -0.5; 2.0; 3.0 |], dtype = torch.float64).reshape(2L, 2L)
              let tols = [| 1e-4; 1e-6; 1e-8; 1e-10 |]
              for control in [ StepControl.PerSample; StepControl.BatchGlobal ] do
                  for t0, t1 in [ 0.0, 2.0; 1.5, 0.25 ] do
                      let errs =
                          tols
                          |> Array.map (fun tol ->
                              let r = AdaptiveOde.integrate (settings tol control) decay x0 t0 t1
                              use x = r.State
                              let exact = values x0 |> Array.map (fun v -> v * exp (t0 * t0 - t1 * t1))
                              maxAbsDiff (values x) exact)
                      // error per unit tolerance stays within a fixed band, relative to the solution's size
                      // (backwards from 1.5 to 0.25 the solution grows by exp(2.19) ~ 9, up to |x| = 27)
                      let size = values x0 |> Array.map (fun v -> abs v * exp (t0 * t0 - t1 * t1)) |> Array.max
                      for tol, e in Array.zip tols errs do
                          Expect.isLessThan e (10.0 * tol * max 1.0 size) (sprintf "%A %g -> %g: error %g at tol %g" control t0 t1 e tol)
                      // ... and falls in proportion to it (DP5 with local extrapolation: global error ~ tol)
                      let slope = logSlope tols errs
                      Expect.isTrue
                          (slope > 0.8 && slope < 1.25)
                          (sprintf "%A %g -> %g: log-log slope %.3f (errors %A)" control t0 t1 slope errs)
          }

          test "global error tracks the tolerance on the Gaussian probability flow (exact map known)" {
              let field = ProbabilityFlow.field sde (Model.noise (gaussianNoiseModel sde gauss))
              use g = generator 21L
              use xT = torch.randn ([| 32L; 4L |], dtype = torch.float64, generator = g)
              let xs = values xT
              let exact = xs |> Array.mapi (fun i x -> OdeSolverTests.exactFlow x (i % 4) 1.0 1e-3)
              // (at 1e-4 the steps are still far from the asymptotic regime near eps: error ~40 tol)
              let tols = [| 1e-5; 1e-6; 1e-7; 1e-8 |]
              for control in [ StepControl.PerSample; StepControl.BatchGlobal ] do
                  let errs, nfes =
                      tols
                      |> Array.map (fun tol ->
                          let r = AdaptiveOde.integrate (settings tol control) field xT 1.0 1e-3
                          use x = r.State
                          maxAbsDiff (values x) exact, r.Nfe)
                      |> Array.unzip
                  printfn "Gaussian flow, %A: errors %A at tolerances %A, NFE %A" control errs tols nfes
                  for tol, e in Array.zip tols errs do
                      Expect.isLessThan e (20.0 * tol) (sprintf "%A: error %g at tol %g (seed 21)" control e tol)
                  let slope = logSlope tols errs
                  Expect.isTrue (slope > 0.7 && slope < 1.3) (sprintf "%A: log-log slope %.3f, errors %A" control slope errs)
                  Expect.isTrue
                      (Array.pairwise nfes |> Array.forall (fun (a, b) -> a < b))
                      (sprintf "%A: NFE grows as tol shrinks: %A" control nfes)
          }

          test "per-sample control: a fast sample does not change the others' steps or results" {
              // rates 1, 2 and 300: the fast sample needs ~100 steps (explicit stability); the others a handful
              let tol = 1e-6
              use lambda = torch.tensor([| 1.0; 2.0; 300.0 |], dtype = torch.float64).reshape(3L, 1L)
              use x0 = torch.tensor([| 1.0; -2.0; 0.5; 1.5; 3.0; -1.0 |], dtype = torch.float64).reshape(3L, 2L)
              let together = AdaptiveOde.integrate (settings tol StepControl.PerSample) (linear lambda) x0 0.0 1.0
              use xt = together.State
              for i in 0L .. 2L do
                  use li = lambda.narrow (0L, i, 1L)
                  use xi = x0.narrow (0L, i, 1L)
                  let alone = AdaptiveOde.integrate (settings tol StepControl.PerSample) (linear li) xi 0.0 1.0
                  use xa = alone.State
                  use row = xt.narrow (0L, i, 1L)
                  Expect.isTrue (same xa row) (sprintf "sample %d: same result alone and in the batch" i)
                  Expect.equal together.Accepted.[int i] alone.Accepted.[0] (sprintf "sample %d: same accepted steps" i)
                  Expect.equal together.Rejected.[int i] alone.Rejected.[0] (sprintf "sample %d: same rejected steps" i)
                  if i = 2L then
                      Expect.equal together.Nfe alone.Nfe "the batch costs what its slowest sample costs"
              Expect.isGreaterThan together.Accepted.[2] (5 * together.Accepted.[0]) "the fast sample takes many more steps"
              // batch-global control makes every sample take the fast sample's steps
              let shared = AdaptiveOde.integrate (settings tol StepControl.BatchGlobal) (linear lambda) x0 0.0 1.0
              shared.State.Dispose()
              Expect.allEqual shared.Accepted shared.Accepted.[0] "one step sequence for the batch"
              Expect.isGreaterThan shared.Accepted.[0] (5 * together.Accepted.[0]) "slow samples follow the fast one under global control"
              // and per-sample results are within tolerance of exp(-lambda)
              let exact = values x0 |> Array.mapi (fun j v -> v * exp (-([| 1.0; 2.0; 300.0 |].[j / 2])))
              Expect.isLessThan (maxAbsDiff (values xt) exact) (10.0 * tol) "per-sample accuracy"
          }

          test "initial and maximum step sizes are honoured; NFE counts every evaluation" {
              use x0 = torch.tensor([| 1.0; 2.0 |], dtype = torch.float64).reshape(1L, 2L)
              let calls = ref 0
              let counted: TimeField =
                  fun x t ->
                      calls.Value <- calls.Value + 1
                      decay x t
              let r = AdaptiveOde.integrate { AdaptiveOde.defaults with InitialStep = Some 0.01; MaxStep = Some 0.05 } counted x0 0.0 1.0
              r.State.Dispose()
              Expect.equal r.Nfe calls.Value "NFE = field calls"
              Expect.equal r.Nfe (1 + 6 * r.Steps) "no initial-step probe when the first step is given"
              Expect.isGreaterThanOrEqual r.Accepted.[0] 20 "at least 1 / MaxStep accepted steps"
              let times = ResizeArray<float>()
              let r2 =
                  AdaptiveOde.integrate
                      { AdaptiveOde.defaults with InitialStep = Some 0.01; Observer = Some(fun _ t _ -> times.Add t) }
                      decay
                      x0
                      0.0
                      1.0
              r2.State.Dispose()
              Expect.isTrue (times.[0] = 0.01 || times.[0] = 0.0) (sprintf "first attempted step is 0.01 (t after step 1: %g)" times.[0])
              Expect.equal times.[times.Count - 1] 1.0 "ends exactly at t1"
          }

          test "the PI controller (PiBeta 0.04) also tracks the tolerance" {
              use x0 = torch.tensor([| 1.0; -0.5 |], dtype = torch.float64).reshape(1L, 2L)
              let tols = [| 1e-4; 1e-6; 1e-8 |]
              let errs =
                  tols
                  |> Array.map (fun tol ->
                      let r = AdaptiveOde.integrate { settings tol StepControl.PerSample with PiBeta = 0.04 } decay x0 0.0 2.0
                      use x = r.State
                      maxAbsDiff (values x) (values x0 |> Array.map (fun v -> v * exp -4.0)))
              for tol, e in Array.zip tols errs do
                  Expect.isLessThan e (10.0 * tol) (sprintf "error %g at tol %g" e tol)
              let slope = logSlope tols errs
              Expect.isTrue (slope > 0.8 && slope < 1.25) (sprintf "slope %.3f" slope)
          }

          test "float32 states: error tracks the tolerance down to float32 resolution" {
              use x0 = torch.tensor([| 1.0f; -0.5f; 2.0f; 3.0f |]).reshape(2L, 2L)
              for tol in [ 1e-3; 1e-4; 1e-5 ] do
                  let r = AdaptiveOde.integrate (settings tol StepControl.PerSample) decay x0 0.0 2.0
                  use x = r.State
                  Expect.equal x.dtype torch.float32 "dtype kept"
                  let e = maxAbsDiff (values x) (values x0 |> Array.map (fun v -> v * exp -4.0))
                  // float32 rounding adds ~1e-7 |x| per step over a few dozen steps
                  Expect.isLessThan e (10.0 * tol + 1e-5) (sprintf "float32 error %g at tol %g" e tol)
          }

          test "guards: MaxSteps, step-size underflow, MinStep, non-finite fields give clear errors" {
              use x0 = torch.ones ([| 2L; 2L |], dtype = torch.float64)
              expectInvalid "MaxSteps = 3" (fun () -> AdaptiveOde.integrate { AdaptiveOde.defaults with MaxSteps = 3 } decay x0 0.0 2.0)
              // x' = 1 / (0.5 - t)^2 blows up at t = 0.5: the step size shrinks towards zero there
              let blowUp: TimeField = fun x t -> torch.ones_like (x) / (t.reshape ([| -1L; 1L |]) - 0.5).square()
              expectInvalid "step size fell" (fun () -> AdaptiveOde.integrate AdaptiveOde.defaults blowUp x0 0.0 1.0)
              expectInvalid "MinStep = 0.01" (fun () ->
                  AdaptiveOde.integrate { AdaptiveOde.defaults with MinStep = Some 0.01 } blowUp x0 0.0 1.0)
              let nan: TimeField = fun x t -> torch.where (t.reshape([| -1L; 1L |]).gt(sc 0.3), x * Double.NaN, -x)
              expectInvalid "not finite" (fun () -> AdaptiveOde.integrate AdaptiveOde.defaults nan x0 0.0 1.0)
              expectInvalid "not finite at the initial state" (fun () -> AdaptiveOde.integrate AdaptiveOde.defaults nan x0 0.5 1.0)
              let wrongShape: TimeField = fun _ _ -> torch.zeros (3L)
              expectInvalid "shaped like the state" (fun () -> AdaptiveOde.integrate AdaptiveOde.defaults wrongShape x0 0.0 1.0)
          }

          test "bad settings and inputs are rejected naming the parameter" {
              use x0 = torch.ones ([| 2L; 2L |], dtype = torch.float64)
              let run s = AdaptiveOde.integrate s decay x0 0.0 1.0
              let d = AdaptiveOde.defaults
              expectArg "rtol" (fun () -> run { d with Rtol = 0.0 })
              expectArg "rtol" (fun () -> run { d with Rtol = 1.0 })
              expectArg "atol" (fun () -> run { d with Atol = -1e-6 })
              expectArg "atol" (fun () -> run { d with Atol = Double.NaN })
              expectArg "maxSteps" (fun () -> run { d with MaxSteps = 0 })
              expectArg "safety" (fun () -> run { d with Safety = 1.5 })
              expectArg "minFactor" (fun () -> run { d with MinFactor = 1.0 })
              expectArg "maxFactor" (fun () -> run { d with MaxFactor = 0.5 })
              expectArg "piBeta" (fun () -> run { d with PiBeta = 0.5 })
              expectArg "initialStep" (fun () -> run { d with InitialStep = Some -0.1 })
              expectArg "minStep" (fun () -> run { d with MinStep = Some 0.5; MaxStep = Some 0.1 })
              expectArg "x" (fun () -> AdaptiveOde.integrate d decay (torch.ones ([| 2L |], dtype = torch.int64)) 0.0 1.0)
              expectArg "t1" (fun () -> AdaptiveOde.integrate d decay x0 0.0 Double.PositiveInfinity)
          }

          test "input untouched; zero-length interval returns a copy at no cost; live tensors return to baseline" {
              use x0 = torch.tensor([| 1.0; 2.0; 3.0; 4.0 |], dtype = torch.float64).reshape(2L, 2L)
              use copy = x0.clone ()
              let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
              let before = live ()
              let r = AdaptiveOde.integrate AdaptiveOde.defaults decay x0 0.0 1.0
              r.State.Dispose()
              Expect.equal (live ()) before "live tensors back to baseline after disposing the result"
              Expect.isTrue (same x0 copy) "x0 untouched"
              let z = AdaptiveOde.integrate AdaptiveOde.defaults decay x0 0.7 0.7
              Expect.equal z.Nfe 0 "no evaluations"
              Expect.isTrue (same z.State x0) "same values"
              Expect.isFalse (obj.ReferenceEquals(z.State, x0)) "a copy"
              z.State.Dispose()
          } ]
