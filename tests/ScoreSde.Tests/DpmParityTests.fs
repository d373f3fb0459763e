/// The DPM solvers against the published sampler (dpm_solver_pytorch.py), sample by sample: reference
/// outputs from an independent Python implementation of it (fixtures/make_dpm_reference.py).
module ScoreSde.Tests.DpmParityTests

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp

/// A fixture case as the library's settings.
let private settingsOf (case: JsonElement) (arithmetic: DpmArithmetic) =
    let denoise = case.GetProperty("denoise").GetBoolean()
    let steps = case.GetProperty("steps").GetInt32()
    { dpmDefaults with
        Algorithm =
            (if case.GetProperty("algorithm").GetString() = "dpmsolver++" then
                 DpmAlgorithm.DpmSolverPlusPlus
             else
                 DpmAlgorithm.DpmSolver)
        Method =
            (if case.GetProperty("method").GetString() = "multistep" then
                 DpmMethod.MultiStep
             else
                 DpmMethod.SingleStep)
        Order = case.GetProperty("order").GetInt32()
        Grid =
            (match case.GetProperty("grid").GetString() with
             | "logSNR" -> TimeGrid.LogSnr
             | "time_uniform" -> TimeGrid.Uniform
             | _ -> TimeGrid.Quadratic)
        // the published steps count solver steps; denoise_to_zero adds one evaluation
        Steps = steps + (if denoise then 1 else 0)
        Denoise = denoise
        LowerOrderFinal =
            (match case.GetProperty("lower_order_below").ValueKind with
             | JsonValueKind.Null -> LowerOrderFinal.Never
             | _ -> LowerOrderFinal.BelowSteps(case.GetProperty("lower_order_below").GetInt32()))
        ThirdOrder = DpmThirdOrder.Published
        Arithmetic = arithmetic }

let private describe (case: JsonElement) =
    sprintf
        "%s %s order %d, %s, %d steps, lower order below %s%s"
        (case.GetProperty("algorithm").GetString())
        (case.GetProperty("method").GetString())
        (case.GetProperty("order").GetInt32())
        (case.GetProperty("grid").GetString())
        (case.GetProperty("steps").GetInt32())
        (case.GetProperty("lower_order_below").ToString())
        (if case.GetProperty("denoise").GetBoolean() then ", denoised" else "")

let private floats (e: JsonElement) = e.EnumerateArray() |> Seq.map (fun v -> v.GetDouble()) |> Array.ofSeq

/// max |ours - reference| / max |reference| of a run from the float32 latent (or its float64 cast)
/// against the fixture's samples of that dtype.
let private sampleError (case: JsonElement) (arithmetic: DpmArithmetic) (dtype: torch.ScalarType) =
    use g = generator 3L
    use x32 = torch.randn ([| 16L; 2L |], generator = g)
    use xT = x32.to_type (dtype)
    let r = dpmSample sde (Model.noise (ringNoiseModel sde)) (settingsOf case arithmetic) xT
    use x = r.Samples
    Expect.equal x.dtype dtype "dtype kept"
    let ours = values x
    let reference = floats (case.GetProperty(if dtype = torch.float64 then "samples_float64" else "samples"))
    (Array.map2 (fun a b -> abs (a - b)) ours reference |> Array.max)
    / (reference |> Array.map abs |> Array.max)

[<Tests>]
let tests =
    testList
        "DPM-Solver parity with dpm_solver_pytorch.py"
        [ test "the published arithmetic's time grids are the reference's float32 grids" {
              use doc = JsonDocument.Parse(File.ReadAllText(NoiseTests.fixture "dpm_reference.json"))
              let mutable worst = 0.0
              for case in doc.RootElement.GetProperty("cases").EnumerateArray() do
                  let run = settingsOf case DpmArithmetic.Published
                  let times, _ = DpmSolver.scheduleWith (Some VpSchedule.standard) sde run.Settings run.Sampling.Schedule run.Denoise
                  let reference = floats (case.GetProperty("times"))
                  Expect.equal times.Length reference.Length (describe case + ": grid length")
                  for i in 0 .. times.Length - 1 do
                      let err = abs (times.[i] - reference.[i]) / reference.[i]
                      worst <- max worst err
                      // float32 lambdas near eps carry PyTorch's exp and log rounding (1 ulp of lambda ~ 5e-7,
                      // and dt / t = 1.8 dlambda there)
                      Expect.isLessThan err 2e-6 (sprintf "%s: time %d (%.9g against %.9g)" (describe case) i times.[i] reference.[i])
              printfn "DPM parity: time grids, largest relative difference %.3g" worst
          }

          test "samples match the reference sample by sample (float32, and float64 with float32 coefficients)" {
              // Error measure: max |ours - reference| / max |reference| over a case's 16 samples.
              // float64 with the published arithmetic: the same float32 coefficients as the reference, and
              // float64 element-wise sums, so only PyTorch's exp, log and expm1 rounding (1 ulp in 4.6% of
              // float32 arguments) can differ: 1e-6 (measured: 4e-7 at most, 1e-15 in most cases).
              // float32: the published code's own float32 rounding (its samples' distance to the same run in
              // float64, in the fixture) ranges from 8e-8 to 3e-5 (where a step's terms are 24 times its
              // result: few-step single-step DPM-Solver-3 with noise prediction). Our sums round the same
              // terms in another order, with errors of the same size and independent of the reference's:
              // each case is held to 3 times its rounding, with a floor of 4e-7 (six float32 roundings).
              use doc = JsonDocument.Parse(File.ReadAllText(NoiseTests.fixture "dpm_reference.json"))
              let mutable worst32, worst64, worstFloat64, worstRatio = 0.0, 0.0, 0.0, 0.0
              for case in doc.RootElement.GetProperty("cases").EnumerateArray() do
                  let rounding = case.GetProperty("float32_rounding").GetDouble()
                  let e32 = sampleError case DpmSolver.defaults.Arithmetic torch.float32
                  let e64 = sampleError case DpmArithmetic.Published torch.float64
                  let eFloat64 = sampleError case DpmArithmetic.Float64 torch.float32
                  printfn
                      "DPM parity: %s: float32 %.3g (reference's own float32 rounding %.3g), float64 %.3g; float64 arithmetic on float32 samples %.3g"
                      (describe case)
                      e32
                      rounding
                      e64
                      eFloat64
                  Expect.isLessThan e32 (3.0 * max 4e-7 rounding) (sprintf "%s: float32 samples" (describe case))
                  Expect.isLessThan e64 1e-6 (sprintf "%s: float64 samples" (describe case))
                  worst32 <- max worst32 e32
                  worstRatio <- max worstRatio (e32 / rounding)
                  worst64 <- max worst64 e64
                  worstFloat64 <- max worstFloat64 eFloat64
              printfn
                  "DPM parity: worst float32 %.3g (at most %.2f times the reference's own float32 rounding), float64 %.3g; float64 arithmetic on float32 samples (not the published numbers) %.3g"
                  worst32
                  worstRatio
                  worst64
                  worstFloat64
          } ]
