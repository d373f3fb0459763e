/// ScoreSdeVeScheduler against Python: diffusers' own test value, the reference fixture made by
/// fixtures/make_ve_reference.py (diffusers' semantics in PyTorch 1.13), and a statistical check of the
/// sampling loop on Gaussian data against the exact variance of its linear-Gaussian chain.
module ScoreSde.Tests.VeSchedulerTests

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Tests.Common

let private reference = lazy (JsonDocument.Parse(File.ReadAllText(NoiseTests.fixture "ve_scheduler_reference.json")))

let private numbers (e: JsonElement) = e.EnumerateArray() |> Seq.map (fun v -> v.GetDouble()) |> Array.ofSeq

let private dtypeOf (name: string) = if name = "float64" then torch.float64 else torch.float32

/// A tensor holding fixture values (float32 values are stored exactly as doubles).
let private tensorOf (values: float[]) (shape: int64[]) (dtype: torch.ScalarType) =
    use t = torch.tensor (values, dtype = torch.float64)
    use r = t.reshape (shape)
    r.to_type (dtype)

/// The largest |actual - expected| over two arrays, and the largest |expected|.
let private maxError (actual: float[]) (expected: float[]) =
    Expect.equal actual.Length expected.Length "lengths"
    Array.map2 (fun a e -> abs (a - e)) actual expected |> Array.max, expected |> Array.map abs |> Array.max

/// np.isclose with its default tolerances (rtol 1e-5, atol 1e-8), as diffusers' test compares.
let private isClose (actual: float) (expected: float) = abs (actual - expected) <= 1e-8 + 1e-5 * abs expected

/// model(sample, sigma) = sample * sigma / (sigma + 1), diffusers' dummy model, in the sample's dtype.
let private dummyModel (sample: Tensor) (sigma: Tensor) =
    use num = sample * sigma
    use den = sigma + 1.0
    num / den

[<Tests>]
let tests =
    testList
        "ScoreSdeVeScheduler (diffusers compatibility)"
        [ test "diffusers' test_full_loop_no_noise: sum |x| = 14372758528 and mean |x| = 18714530 (seed 0)" {
              let s = ScoreSdeVeScheduler()
              // as the test does: set_sigmas(3) BEFORE set_timesteps(3), so the sigmas stay those of the
              // constructor's 2000 timesteps
              s.SetSigmas(3)
              s.SetTimesteps(3)
              use g = generator 0L
              let mutable sample = SchedulerTests.initial torch.float32
              for i in 0..2 do
                  use sigma = s.Sigmas.[int64 i]
                  use t = s.Timesteps.[int64 i]
                  for _ in 1 .. s.Config.CorrectSteps do
                      use out = dummyModel sample sigma
                      let r = s.StepCorrect(out, sample, g)
                      r.PrevSampleMean.Dispose()
                      sample.Dispose()
                      sample <- r.PrevSample
                  use out = dummyModel sample sigma
                  let r = s.StepPred(out, t, sample, g)
                  r.PrevSampleMean.Dispose()
                  sample.Dispose()
                  sample <- r.PrevSample
              use x = sample
              // float32 reductions, as torch.sum and torch.mean in the test
              let sum = scalar (x.abs().sum())
              let mean = scalar (x.abs().mean())
              printfn "VE scheduler, diffusers' full-loop test: sum |x| = %.1f, mean |x| = %.1f" sum mean
              Expect.isTrue (isClose sum 14372758528.0) (sprintf "sum |x| = %.1f, diffusers expects 14372758528.0" sum)
              Expect.isTrue (isClose mean 18714530.0) (sprintf "mean |x| = %.1f, diffusers expects 18714530.0" mean)
              Expect.equal x.dtype torch.float32 "float32"
          }

          test "tables: timesteps, sigmas and discrete sigmas as the Python class makes them" {
              let tables = reference.Value.RootElement.GetProperty("tables").EnumerateArray() |> Array.ofSeq
              // The same float32 operations on both sides, but PyTorch 1.13's linspace rounds differently
              // from libtorch 2.10's (1.13 misses the endpoint by up to 6.5e-8; 2.x hits both ends), so:
              // timesteps within one ulp of 1.0; a sigma sigma_min r^t within ln(r) times that plus 2 ulps
              // (powf and the product); a discrete sigma exp(l) within |l| ulps (its linspace of logs) plus
              // 2 (exp's rounding, vectorised differently in the two versions).
              let ulp = 1.0 / 8388608.0
              let check (what: string) (t: Tensor) (expected: float[]) (picks: int[] option) (tol: float -> float) =
                  Expect.equal t.dtype torch.float32 (what + " float32")
                  Expect.equal t.device_type DeviceType.CPU (what + " on the CPU")
                  let v = values t
                  let v = picks |> Option.map (Array.map (fun i -> v.[i])) |> Option.defaultValue v
                  Expect.equal v.Length expected.Length (what + " length")
                  Array.iteri2 (fun i a e -> close (tol e) a e (sprintf "%s[%d]" what i)) v expected
              let checkAll (label: string) (s: ScoreSdeVeScheduler) (lo: float) (hi: float) (table: JsonElement) (picks: int[] option) =
                  check (label + " timesteps") s.Timesteps (numbers (table.GetProperty "timesteps")) picks (fun _ -> ulp)
                  check (label + " sigmas") s.Sigmas (numbers (table.GetProperty "sigmas")) picks (fun e -> e * (log (hi / lo) + 2.0) * ulp)
                  check (label + " discrete sigmas") s.DiscreteSigmas (numbers (table.GetProperty "discrete_sigmas")) picks (fun e ->
                      e * (max (abs (log lo)) (abs (log hi)) + 2.0) * ulp)
              let constructor = tables.[0]
              let s = ScoreSdeVeScheduler()
              for name, t in [ "timesteps", s.Timesteps; "sigmas", s.Sigmas; "discrete sigmas", s.DiscreteSigmas ] do
                  Expect.equal (t.numel ()) 2000L (name + ": the constructor's 2000 entries")
              let picks =
                  constructor.GetProperty("indices").EnumerateArray()
                  |> Seq.map (fun e -> e.GetInt32())
                  |> Array.ofSeq
              checkAll "constructor" s 0.01 1348.0 constructor (Some picks)
              let sums = numbers (constructor.GetProperty "sums")
              for k, t in [ 0, s.Timesteps; 1, s.Sigmas; 2, s.DiscreteSigmas ] do
                  closeRel 1e-6 (values t |> Array.sum) sums.[k] (sprintf "constructor table %d sum" k)
              let s = ScoreSdeVeScheduler(50, sigmaMin = 0.02, sigmaMax = 90.0, samplingEps = 1e-3)
              s.SetTimesteps(7)
              s.SetSigmas(7)
              checkAll "7-step" s 0.02 90.0 tables.[1] None
              s.SetTimesteps(5, samplingEps = 0.25)
              s.SetSigmas(9, sigmaMin = 0.5, sigmaMax = 20.0, samplingEps = 0.1)
              checkAll "overridden" s 0.5 20.0 tables.[2] None
          }

          test "single StepPred and StepCorrect steps reproduce the Python class (float32, float64, per-batch t)" {
              let s = ScoreSdeVeScheduler(sigmaMax = 50.0)
              s.SetTimesteps(10)
              s.SetSigmas(10)
              let mutable worst = 0.0
              for case in reference.Value.RootElement.GetProperty("steps").EnumerateArray() do
                  let op = case.GetProperty("op").GetString()
                  let dtype = dtypeOf (case.GetProperty("dtype").GetString())
                  let seed = case.GetProperty("seed").GetInt64()
                  let shape = case.GetProperty("shape").EnumerateArray() |> Seq.map (fun e -> e.GetInt64()) |> Array.ofSeq
                  use sample = tensorOf (numbers (case.GetProperty "sample")) shape dtype
                  use out = tensorOf (numbers (case.GetProperty "model_output")) shape dtype
                  use g = generator seed
                  let what = sprintf "%s %A seed %d" op dtype seed
                  let r =
                      if op = "pred" then
                          let kind = case.GetProperty("timestep_kind").GetString()
                          let tv = numbers (case.GetProperty "timestep")
                          use t =
                              match kind with
                              | "first" -> s.Timesteps.[0L]
                              | "middle" -> s.Timesteps.[5L]
                              | "last" -> s.Timesteps.[9L]
                              | _ -> torch.tensor (tv, dtype = dtypeOf (case.GetProperty("timestep_dtype").GetString()))
                          Expect.equal (values t) tv (what + ": the timestep Python used")
                          s.StepPred(out, t, sample, g)
                      else
                          s.StepCorrect(out, sample, g)
                  use prev = r.PrevSample
                  use mean = r.PrevSampleMean
                  let mutable rd = JsonElement()
                  if case.TryGetProperty("result_dtype", &rd) then
                      Expect.equal prev.dtype (dtypeOf (rd.GetString())) (what + ": result dtype as torch promotes it")
                  // float32 tolerance on the array's scale: each element passes a few float32 roundings
                  // (g, g^2, e, sqrt(2 e) and the products) of quantities bounded by the array's largest
                  // magnitude, and the corrector's norms are summed in another order than torch's (a few
                  // ulps of e, even for float64 samples, whose noise and e are float32 in diffusers).
                  for name, t in [ "prev_sample", prev; "prev_sample_mean", mean ] do
                      let err, scale = maxError (values t) (numbers (case.GetProperty name))
                      worst <- max worst (err / scale)
                      Expect.isLessThanOrEqual err (8.0 * 1.2e-7 * scale) (sprintf "%s %s: max error %g of %g" what name err scale)
              printfn "VE scheduler single steps: largest error %.2e relative to the array's largest value" worst
          }

          test "a seeded pipeline loop (2 corrector steps + 1 predictor step per time) reproduces Python" {
              for case in reference.Value.RootElement.GetProperty("loops").EnumerateArray() do
                  let dtype = dtypeOf (case.GetProperty("dtype").GetString())
                  let steps = case.GetProperty("steps").GetInt32()
                  let shape = case.GetProperty("shape").EnumerateArray() |> Seq.map (fun e -> e.GetInt64()) |> Array.ofSeq
                  let s = ScoreSdeVeScheduler(snr = 0.16, sigmaMax = 50.0, correctSteps = case.GetProperty("correct_steps").GetInt32())
                  use g = generator (case.GetProperty("seed").GetInt64())
                  let mutable sample =
                      use z = torch.randn (shape, dtype = dtype, generator = g)
                      z * s.InitNoiseSigma
                  let mutable mean = sample.clone ()
                  s.SetTimesteps(steps)
                  s.SetSigmas(steps)
                  // model: the exact score of N(0, I) data, -x / (1 + sigma^2), sigma = Sigmas[i] in x's dtype
                  let score (x: Tensor) (sigma: Tensor) =
                      use s2 = sigma.square ()
                      use den = s2 + 1.0
                      use neg = x.neg ()
                      neg / den
                  for i in 0 .. steps - 1 do
                      use sigma32 = s.Sigmas.[int64 i] * torch.ones (shape.[0])
                      use sigma64 = sigma32.to_type (dtype)
                      use sigma = sigma64.reshape (-1L, 1L, 1L, 1L)
                      for _ in 1 .. s.Config.CorrectSteps do
                          use out = score sample sigma
                          let r = s.StepCorrect(out, sample, g)
                          r.PrevSampleMean.Dispose()
                          sample.Dispose()
                          sample <- r.PrevSample
                      use out = score sample sigma
                      use t = s.Timesteps.[int64 i]
                      let r = s.StepPred(out, t, sample, g)
                      sample.Dispose()
                      mean.Dispose()
                      sample <- r.PrevSample
                      mean <- r.PrevSampleMean
                  use sample = sample
                  use mean = mean
                  // 18 steps compound the float32 step-size differences of the single steps (each a few
                  // ulps): 2e-6 of the scale; float64 loops share diffusers' float32 noise and step sizes.
                  for name, t in [ "prev_sample", sample; "prev_sample_mean", mean ] do
                      let err, scale = maxError (values t) (numbers (case.GetProperty name))
                      printfn "VE scheduler loop %A %s: max error %.2e (scale %.3g)" dtype name err scale
                      Expect.isLessThanOrEqual err (2e-6 * scale) (sprintf "%A %s: max error %g of %g" dtype name err scale)
          }

          test "AddNoise reproduces the Python class" {
              let a = reference.Value.RootElement.GetProperty("add_noise")
              let s =
                  ScoreSdeVeScheduler(a.GetProperty("num_train_timesteps").GetInt32(), sigmaMax = a.GetProperty("sigma_max").GetDouble())
              use original = tensorOf (numbers (a.GetProperty "original")) [| 3L; 8L |] torch.float32
              use noise = tensorOf (numbers (a.GetProperty "noise")) [| 3L; 8L |] torch.float32
              use idx = torch.tensor ([| 0L; 57L; 99L |])
              use r = s.AddNoise(original, noise, idx)
              Expect.equal r.dtype torch.float32 "float32"
              // one float32 product and sum per element, discrete sigmas within 2 ulps
              let err, scale = maxError (values r) (numbers (a.GetProperty "result"))
              Expect.isLessThanOrEqual err (4.0 * 1.2e-7 * scale) (sprintf "max error %g of %g" err scale)
          }
          test "the pipeline loop with the exact score samples Gaussian data (exact variance of the chain)" {
              // Data N(0, 0.25 I), whose VE marginals are N(0, (0.25 + sigma^2) I): score -x / (0.25 + sigma^2).
              // Without the corrector every step is linear-Gaussian, x' = a x + g z with g^2 = sigma_k^2 -
              // sigma_{k-1}^2 (k = n - 1 - i) and a = 1 - g^2 / (0.25 + sigma_i^2) (the model at the
              // continuous sigma_i), so the final mean's variance follows in closed form (float64, from
              // the formulas, not the scheduler's tables): the test then measures the discretisation
              // bias exactly and checks the sample against it within 4 standard errors.
              let n, s2, lo, hi, eps = 200, 0.25, 0.01, 50.0, 1e-5
              let batch, dim = 4000L, 16L
              let run (correctSteps: int) (seed: int64) =
                  let s = ScoreSdeVeScheduler(snr = 0.16, sigmaMin = lo, sigmaMax = hi, samplingEps = eps, correctSteps = correctSteps)
                  use g = generator seed
                  let mutable x =
                      use z = torch.randn ([| batch; dim |], generator = g)
                      z * s.InitNoiseSigma
                  let mutable mean: Tensor = null
                  s.SetTimesteps(n)
                  s.SetSigmas(n)
                  let sigmas = values s.Sigmas
                  for i in 0 .. n - 1 do
                      let score (x: Tensor) = x * (-1.0 / (s2 + sigmas.[i] * sigmas.[i]))
                      for _ in 1..correctSteps do
                          use out = score x
                          let r = s.StepCorrect(out, x, g)
                          r.PrevSampleMean.Dispose()
                          x.Dispose()
                          x <- r.PrevSample
                      use out = score x
                      use t = s.Timesteps.[int64 i]
                      let r = s.StepPred(out, t, x, g)
                      x.Dispose()
                      if not (isNull mean) then
                          mean.Dispose()
                      x <- r.PrevSample
                      mean <- r.PrevSampleMean
                  x.Dispose()
                  use m = mean
                  let v = values m
                  let mu = Array.average v
                  sqrt (v |> Array.averageBy (fun a -> a * a)), mu
              let sigmaAt (u: float) = lo * (hi / lo) ** u
              let mutable var = hi * hi
              let mutable meanVar = 0.0
              for i in 0 .. n - 1 do
                  let t = 1.0 - float i * (1.0 - eps) / float (n - 1)
                  let k = n - 1 - i
                  let below = if k = 0 then 0.0 else sigmaAt (float (k - 1) / float (n - 1))
                  let g2 = sigmaAt (float k / float (n - 1)) ** 2.0 - below * below
                  let a = 1.0 - g2 / (s2 + sigmaAt t ** 2.0)
                  meanVar <- a * a * var
                  var <- meanVar + g2
              let expected = sqrt meanVar
              let values = float (batch * dim)
              let std, mu = run 0 1L
              printfn "VE pipeline loop, %d steps, predictor only: std %.4f (chain %.4f, data 0.5), mean %.4f" n std expected mu
              // the sample rms of 64,000 independent N(0, v) values: relative standard error 1 / sqrt(2 N)
              closeRel (4.0 / sqrt (2.0 * values)) std expected "predictor-only std (seed 1)"
              close (4.0 * expected / sqrt values) mu 0.0 "predictor-only mean (seed 1)"
              let std, mu = run 1 2L
              printfn "VE pipeline loop, %d steps, with one corrector step: std %.4f, mean %.4f" n std mu
              // Langevin steps at snr 0.16 have a stationary variance bias of about snr^2 (std +1.3%), on
              // top of the predictor's (the chain above: +2.2% at 200 steps): only that order is checked.
              closeRel 0.04 std 0.5 "std with the corrector (seed 2)"
              close (4.0 * 0.5 / sqrt values) mu 0.0 "mean with the corrector (seed 2)"
          } ]
