/// The C# facade's DPM-Solver (Sampler.DpmSolver) against the core, and the DPM loops' memory.
module ScoreSde.Tests.DpmSolverFacadeTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DpmSolverTests

let private sde = Sde.standardVp
let private gauss = PredictorTests.gauss
let private eps = 1e-3
let private d = dpmDefaults

open ScoreSde.CSharp

[<Tests>]
let facadeTests =
    let csModel = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel sde gauss)
    testList
        "C# facade: Sampler.DpmSolver"
        [ test "the defaults sample the Gaussian in 20 evaluations (float32)" {
              use g = generator 21L
              let r = Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 20000L; 4L |], DpmSolverOptions(), g)
              use x = r.Samples
              Expect.equal r.Nfe 20 "NFE"
              Expect.equal x.dtype torch.float32 "dtype"
              let ms, ss = moments x
              // Monte Carlo standard errors: s / sqrt(20000) <= 0.007 for the means, s / sqrt(40000) for
              // the stds; 0.03 is over 4 of them, and the 20-step solver error is ~1e-3 (tests above)
              for i in 0..3 do
                  close 0.03 ms.[i] gauss.Mu.[i] (sprintf "mean %d (seed 21)" i)
                  close 0.03 ss.[i] gauss.S.[i] (sprintf "std %d (seed 21)" i)
          }

          test "options map onto the core solver; the latent is used and not modified" {
              use xT = latent ()
              let before = values xT
              for meth, cmeth in [ DpmSolverMethod.SingleStep, DpmMethod.SingleStep; DpmSolverMethod.MultiStep, DpmMethod.MultiStep ] do
                  for alg, calg in
                      [ DpmSolverAlgorithm.DpmSolver, DpmAlgorithm.DpmSolver
                        DpmSolverAlgorithm.DpmSolverPlusPlus, DpmAlgorithm.DpmSolverPlusPlus ] do
                      for grid, cgrid in
                          [ ScoreSde.CSharp.TimeGrid.TimeUniform, ScoreSde.TimeGrid.Uniform
                            ScoreSde.CSharp.TimeGrid.TimeQuadratic, ScoreSde.TimeGrid.Quadratic ] do
                          let opts =
                              DpmSolverOptions(
                                  Steps = 11,
                                  Order = 2,
                                  Method = meth,
                                  Algorithm = alg,
                                  Grid = grid,
                                  Latent = xT,
                                  Denoise = true
                              )
                          let r = Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 64L; 4L |], opts)
                          let core =
                              dpmSample
                                  sde
                                  (Model.noise (gaussianNoiseModel sde gauss))
                                  { d with Steps = 11; Order = 2; Method = cmeth; Algorithm = calg; Grid = cgrid; Denoise = true }
                                  xT
                          Expect.equal r.Nfe 11 "NFE"
                          Expect.isTrue (same r.Samples core.Samples) (sprintf "%A %A %A: same as the core" meth alg grid)
                          r.Samples.Dispose()
                          core.Samples.Dispose()
              Expect.sequenceEqual (values xT) before "latent unchanged"
              let times = [| 1.0; 0.4; 0.1; 0.01 |]
              let r = Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 64L; 4L |], DpmSolverOptions(Times = times, Latent = xT))
              Expect.equal r.Nfe 3 "explicit times: one evaluation per interval"
              r.Samples.Dispose()
              let a =
                  Sampler.DpmSolver(
                      ScoreSde.CSharp.VpSde(),
                      csModel,
                      [| 64L; 4L |],
                      DpmSolverOptions(Method = DpmSolverMethod.Adaptive, Rtol = 1e-4, Atol = 1e-4, Latent = xT)
                  )
              Expect.isGreaterThan a.Nfe 20 "adaptive at a tight tolerance"
              a.Samples.Dispose()
          }

          test "the defaults are the core's; the rule, update and arithmetic options map onto it" {
              use xT = latent ()
              use x32 = xT.to_type (torch.float32)
              let coreModel = Model.noise (gaussianNoiseModel sde gauss)
              let check (opts: DpmSolverOptions) (settings: DpmRun) (latent: Tensor) (what: string) =
                  opts.Latent <- latent
                  let r = Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 64L; 4L |], opts)
                  let core = dpmSample sde coreModel settings latent
                  Expect.isTrue (same r.Samples core.Samples) (what + ": same samples as the core")
                  r.Samples.Dispose()
                  core.Samples.Dispose()
              check (DpmSolverOptions()) d x32 "defaults, float32"
              check (DpmSolverOptions()) d xT "defaults, float64"
              check
                  (DpmSolverOptions(Steps = 8, LowerOrderFinal = ScoreSde.CSharp.LowerOrderFinal.Never))
                  { d with Steps = 8; LowerOrderFinal = ScoreSde.LowerOrderFinal.Never }
                  x32
                  "LowerOrderFinal.Never"
              check
                  (DpmSolverOptions(Steps = 12, LowerOrderFinalBelowSteps = 15))
                  { d with Steps = 12; LowerOrderFinal = ScoreSde.LowerOrderFinal.BelowSteps 15 }
                  x32
                  "BelowSteps 15"
              check
                  (DpmSolverOptions(Steps = 12, LowerOrderFinal = ScoreSde.CSharp.LowerOrderFinal.Always))
                  { d with Steps = 12; LowerOrderFinal = ScoreSde.LowerOrderFinal.Always }
                  x32
                  "LowerOrderFinal.Always"
              check
                  (DpmSolverOptions(ThirdOrder = ScoreSde.CSharp.DpmThirdOrder.TaylorExact))
                  { d with ThirdOrder = ScoreSde.DpmThirdOrder.TaylorExact }
                  x32
                  "TaylorExact"
              for a, ca in
                  [ ScoreSde.CSharp.DpmArithmetic.Published, ScoreSde.DpmArithmetic.Published
                    ScoreSde.CSharp.DpmArithmetic.Float64, ScoreSde.DpmArithmetic.Float64 ] do
                  for latent in [ x32; xT ] do
                      check (DpmSolverOptions(Arithmetic = a)) { d with Arithmetic = ca } latent (sprintf "%A, %A" a latent.dtype)
              // the options differ where they should: the Taylor-exact update and the float64 arithmetic
              // on float32 samples give other numbers than the defaults
              let run (o: DpmSolverOptions) =
                  o.Latent <- x32
                  let r = Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 64L; 4L |], o)
                  let v = values r.Samples
                  r.Samples.Dispose()
                  v
              let baseline = run (DpmSolverOptions())
              Expect.notEqual (run (DpmSolverOptions(ThirdOrder = ScoreSde.CSharp.DpmThirdOrder.TaylorExact))) baseline "TaylorExact"
              Expect.notEqual (run (DpmSolverOptions(Arithmetic = ScoreSde.CSharp.DpmArithmetic.Float64))) baseline "Float64"
              Expect.equal DpmSolver.defaults.Algorithm DpmAlgorithm.DpmSolver "default algorithm: DPM-Solver (noise prediction)"
              Expect.equal (DpmSolverOptions().Algorithm) DpmSolverAlgorithm.DpmSolver "C# default algorithm"
          }

          test "the same generator seed reproduces the same samples" {
              let run () =
                  use g = generator 5L
                  let r = Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 3L; 4L |], DpmSolverOptions(Steps = 10), g)
                  let v = values r.Samples
                  r.Samples.Dispose()
                  v
              Expect.sequenceEqual (run ()) (run ()) "reproducible"
          }

          test "bad options are rejected naming the option and the value" {
              let run (o: DpmSolverOptions) =
                  Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 2L; 4L |], o) |> fun r -> r.Samples.Dispose()
              try
                  run (DpmSolverOptions(Order = 4))
                  failtest "Order 4 accepted"
              with :? ArgumentOutOfRangeException as e ->
                  Expect.equal e.ParamName "options.Order" "named"
                  Expect.equal e.ActualValue (box 4) "value"
              expectParam "options.Order" (fun () -> run (DpmSolverOptions(Order = 1, Method = DpmSolverMethod.Adaptive)))
              expectParam "options.Steps" (fun () -> run (DpmSolverOptions(Steps = 0)))
              expectParam "options.Steps" (fun () -> run (DpmSolverOptions(Steps = 1, Denoise = true)))
              expectParam "options.Method" (fun () -> run (DpmSolverOptions(Method = enum 42)))
              expectParam "options.Algorithm" (fun () -> run (DpmSolverOptions(Algorithm = enum 42)))
              expectParam "options.Grid" (fun () -> run (DpmSolverOptions(Grid = enum 42)))
              expectParam "options.LowerOrderFinal" (fun () -> run (DpmSolverOptions(LowerOrderFinal = enum 42)))
              expectParam "options.LowerOrderFinalBelowSteps" (fun () -> run (DpmSolverOptions(LowerOrderFinalBelowSteps = 0)))
              expectParam "options.ThirdOrder" (fun () -> run (DpmSolverOptions(ThirdOrder = enum 42)))
              expectParam "options.Arithmetic" (fun () -> run (DpmSolverOptions(Arithmetic = enum 42)))
              expectParam "options.Eps" (fun () -> run (DpmSolverOptions(Eps = 1.0)))
              expectParam "options.Rtol" (fun () -> run (DpmSolverOptions(Method = DpmSolverMethod.Adaptive, Rtol = -0.1)))
              expectParam "options.Atol" (fun () -> run (DpmSolverOptions(Method = DpmSolverMethod.Adaptive, Rtol = 0.0, Atol = 0.0)))
              expectParam "options.MaxEvaluations" (fun () -> run (DpmSolverOptions(Method = DpmSolverMethod.Adaptive, MaxEvaluations = 0)))
              expectParam "options.Times" (fun () -> run (DpmSolverOptions(Times = [| 1.0; 2.0 |])))
              expectParam "options.Times" (fun () -> run (DpmSolverOptions(Times = [| 1.0; 0.1 |], Method = DpmSolverMethod.Adaptive)))
              expectParam "options.Dtype" (fun () -> run (DpmSolverOptions(Dtype = torch.int64)))
              expectParam "options.Latent" (fun () -> run (DpmSolverOptions(Latent = torch.zeros ([| 3L; 4L |]))))
              expectParam "options.Latent" (fun () -> run (DpmSolverOptions(Latent = torch.zeros ([| 2L; 4L |], dtype = torch.int32))))
              expectParam "shape" (fun () ->
                  Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 0L; 4L |], DpmSolverOptions()) |> ignore)
              expectParam "options" (fun () -> Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), csModel, [| 2L |], null) |> ignore)
              expectParam "model" (fun () -> Sampler.DpmSolver(ScoreSde.CSharp.VpSde(), null, [| 2L |], DpmSolverOptions()) |> ignore)
          } ]

[<Tests>]
let memoryTests =
    let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
    testSequenced
    <| testList
        "DPM-Solver memory"
        [ test "the live-tensor count stays flat over 3000 steps and returns to baseline" {
              // a cheap model that allocates its output, like a network
              let cheap = Model.noise (fun x _ -> x * 0.5)
              use g = generator 1L
              use xT = torch.randn ([| 4L; 3L; 8L; 8L |], generator = g)
              for meth in [ DpmMethod.MultiStep; DpmMethod.SingleStep ] do
                  let baseline = live ()
                  let counts = ResizeArray()
                  let settings =
                      { d with
                          Method = meth
                          Steps = 3000
                          Grid = TimeGrid.Uniform
                          Observer =
                              Some(fun i _ _ ->
                                  if i % 200 = 199 then
                                      counts.Add(live ())) }
                  let r = dpmSample sde cheap settings xT
                  Expect.allEqual counts counts.[0] (sprintf "%A: live tensors during sampling %A" meth counts)
                  r.Samples.Dispose()
                  Expect.equal (live ()) baseline (sprintf "%A: back to baseline" meth)
          } ]
