/// The fused fast paths against straightforward versions written out here element by element in
/// float64 (same draws from a same-seeded generator), and the tensor counts of the hot loops.
module ScoreSde.Tests.FastPathTests

open System
open Expecto
open FsCheck
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let sde = Sde.standardVp

/// Tensors created so far on this thread (every TorchSharp tensor object, views included).
let created () =
    let s = DisposeScopeManager.Statistics
    s.CreatedInScopeCount + s.CreatedOutsideScopeCount

// Closed forms written out independently of the library (float64).
let logMean (t: float) = -0.25 * t * t * 19.9 - 0.5 * t * 0.1
let alphaOf (t: float) = exp (logMean t)
let sigmaOf (t: float) = sqrt (1.0 - exp (2.0 * logMean t))
let betaOf (t: float) = 0.1 + t * 19.9

/// Tolerances of a fused float result against the float64 formula: a few float32 ulps of the
/// magnitudes involved (|x| up to ~4 here), and float64 rounding for float64.
let tolFor (dtype: torch.ScalarType) (expected: float) =
    if dtype = torch.float32 then 2e-6 * (1.0 + abs expected) else 1e-12 * (1.0 + abs expected)

let dtypes = [ torch.float32; torch.float64 ]

[<Tests>]
let tests =
    testList
        "Fast paths"
        [ test "StepPred equals diffusers' formula written out in float64, for 0-d, shared and per-sample t" {
              // 4x3x8x8 = 768 elements: libtorch's vectorised normal fill (16 or more contiguous elements).
              let shape = [| 4L; 3L; 8L; 8L |]
              let steps = 50
              let s = ScoreSde.CSharp.ScoreSdeVpScheduler()
              s.SetTimesteps(steps)
              for dtype in dtypes do
                  for mode, times in [ "0-d", [| 0.7 |]; "shared [B]", Array.create 4 0.7; "per-sample [B]", [| 0.9; 0.5; 0.3; 0.05 |] ] do
                      let seed = 11L
                      use g0 = generator 3L
                      use x = torch.randn (shape, dtype = dtype, generator = g0)
                      use out = torch.randn (shape, dtype = dtype, generator = g0)
                      use t =
                          if times.Length = 1 then
                              torch.tensor (times.[0], dtype = dtype)
                          else
                              torch.tensor (times, dtype = dtype)
                      use g = generator seed
                      let r = s.StepPred(out, x, t, g)
                      use sample = r.PrevSample
                      use mean = r.PrevSampleMean
                      use g2 = generator seed
                      use zt = torch.randn (shape, dtype = dtype, generator = g2)
                      let xs, os, zs, ms, ss = values x, values out, values zt, values mean, values sample
                      // the time as the step sees it: rounded to t's dtype
                      let tv = values t
                      let per = xs.Length / 4
                      for i in 0 .. xs.Length - 1 do
                          let ti = if tv.Length = 1 then tv.[0] else tv.[i / per]
                          let beta, sigma = betaOf ti, sigmaOf ti
                          let dt = -1.0 / float steps
                          let score = -os.[i] / sigma
                          let m = xs.[i] + (-0.5 * beta * xs.[i] - beta * score) * dt
                          let smp = m + sqrt beta * sqrt (-dt) * zs.[i]
                          close (tolFor dtype m) ms.[i] m (sprintf "%A %s mean[%d] (seed %d)" dtype mode i seed)
                          close (tolFor dtype smp) ss.[i] smp (sprintf "%A %s sample[%d] (seed %d)" dtype mode i seed)
                      // the same random stream: both generators drew exactly one x-shaped tensor
                      use next1 = torch.randn ([| 5L |], dtype = dtype, generator = g)
                      use next2 = torch.randn ([| 5L |], dtype = dtype, generator = g2)
                      Expect.isTrue (same next1 next2) (sprintf "%A %s: generator advanced by one draw of x's shape" dtype mode)
          }

          test "the fused predictor steps equal mean = A x + B score, sample = mean + C z in float64" {
              let shape = [| 3L; 2L; 5L |]
              let predictors = [ Predictor.EulerMaruyama; Predictor.ReverseDiffusion; Predictor.AncestralSampling ]
              for dtype in dtypes do
                  for p in predictors do
                      for output in [ ModelOutput.Noise; ModelOutput.Score; ModelOutput.Data ] do
                          for ts, ss in [ [| 0.6 |], [| 0.55 |]; [| 0.6; 0.3; 0.9 |], [| 0.55; 0.2; 0.85 |] ] do
                              use g0 = generator 4L
                              use x = torch.randn (shape, dtype = dtype, generator = g0)
                              use out = torch.randn (shape, dtype = dtype, generator = g0)
                              use g = generator 21L
                              let r = Predictor.stepWithOutput sde p output out x ts ss (Noise.fromGenerator g)
                              use sample = r.Sample
                              use mean = r.Mean
                              use g2 = generator 21L
                              use zt = torch.randn (shape, dtype = dtype, generator = g2)
                              let xs, os, zs, ms, smp = values x, values out, values zt, values mean, values sample
                              let per = xs.Length / 3
                              for i in 0 .. xs.Length - 1 do
                                  let k = if ts.Length = 1 then 0 else i / per
                                  let t, s = ts.[k], ss.[k]
                                  let c = Predictor.coefficients sde p t s
                                  let score =
                                      match output with
                                      | ModelOutput.Noise -> -os.[i] / sigmaOf t
                                      | ModelOutput.Score -> os.[i]
                                      | ModelOutput.Data -> (alphaOf t * os.[i] - xs.[i]) / (sigmaOf t ** 2.0)
                                  let m = c.A * xs.[i] + c.B * score
                                  let what = sprintf "%A %s %A %d time(s) element %d" dtype (Predictor.name p) output ts.Length i
                                  close (tolFor dtype m) ms.[i] m (what + " mean")
                                  close (tolFor dtype m) smp.[i] (m + c.NoiseStd * zs.[i]) (what + " sample")
          }

          test "the in-place correctors equal Langevin written out in float64 (every norm, model output, dtype)" {
              let shape = [| 5L; 2L; 3L; 3L |]
              let t, alphaI = 0.4, 0.97
              let correctors =
                  [ "Langevin per-sample", Corrector.langevin 0.16 1
                    "Langevin batch-mean", Corrector.Langevin { Snr = 0.2; Steps = 1; Norm = LangevinNorm.BatchMean }
                    "annealed Langevin", Corrector.annealedLangevin 0.16 1 ]
              let b = int shape.[0]
              for dtype in dtypes do
                  for name, corrector in correctors do
                      for output in [ ModelOutput.Noise; ModelOutput.Score; ModelOutput.Data ] do
                          for withNoise in [ true; false ] do
                              // A deterministic model: out = 0.7 x - 0.2, computed in x's dtype.
                              let model = { Forward = (fun (x: Tensor) _ -> x * 0.7 - 0.2); Output = output }
                              use g0 = generator 5L
                              use x = torch.randn (shape, dtype = dtype, generator = g0)
                              let xs = values x
                              use z = torch.empty_like (x)
                              use tb = full [| shape.[0] |] t dtype
                              use g = generator 33L
                              let nfe = Corrector.correctInPlace sde corrector model x tb z (Noise.fromGenerator g) t alphaI (not withNoise)
                              Expect.equal nfe 1 "one evaluation"
                              use g2 = generator 33L
                              use zt = torch.randn (shape, dtype = dtype, generator = g2)
                              let zs = values zt
                              let grad =
                                  xs
                                  |> Array.map (fun xv ->
                                      let o = 0.7 * xv - 0.2
                                      match output with
                                      | ModelOutput.Noise -> -o / sigmaOf t
                                      | ModelOutput.Score -> o
                                      | ModelOutput.Data -> (alphaOf t * o - xv) / (sigmaOf t ** 2.0))
                              let per = xs.Length / b
                              let norm (v: float[]) k = sqrt (Array.sub v (k * per) per |> Array.sumBy (fun a -> a * a))
                              let steps =
                                  match corrector with
                                  | Corrector.Langevin s when s.Norm = LangevinNorm.PerSample ->
                                      Array.init b (fun k -> 2.0 * alphaI * (s.Snr * norm zs k / norm grad k) ** 2.0)
                                  | Corrector.Langevin s ->
                                      let gn = Array.init b (norm grad) |> Array.average
                                      let zn = Array.init b (norm zs) |> Array.average
                                      Array.create b (2.0 * alphaI * (s.Snr * zn / gn) ** 2.0)
                                  | Corrector.AnnealedLangevin s -> Array.create b (2.0 * alphaI * (s.Snr * sigmaOf t) ** 2.0)
                                  | Corrector.NoCorrector -> failwith "unreachable"
                              let actual = values x
                              for i in 0 .. xs.Length - 1 do
                                  let e = steps.[i / per]
                                  let expected = xs.[i] + e * grad.[i] + (if withNoise then sqrt (2.0 * e) * zs.[i] else 0.0)
                                  // float32: the norms are float32 reductions (relative error ~1e-6 on e)
                                  let tol = if dtype = torch.float32 then 1e-5 * (1.0 + abs expected) else 1e-11 * (1.0 + abs expected)
                                  close
                                      tol
                                      actual.[i]
                                      expected
                                      (sprintf "%A %s %A noise=%b element %d (seeds 5, 33)" dtype name output withNoise i)
          }

          test "StepCorrect with a shared t equals the Langevin step written out in float64" {
              let shape = [| 3L; 4L; 5L |]
              let s = ScoreSde.CSharp.ScoreSdeVpScheduler()
              s.SetTimesteps(10)
              let snr = 0.2
              // alpha_i of the interval [0.4, 0.5] (dt = 1 / 10)
              let alphaI = exp (2.0 * (logMean 0.5 - logMean 0.4))
              for dtype in dtypes do
                  for mode, langevinNorm in
                      [ "0-d", ScoreSde.CSharp.LangevinNorm.BatchMean
                        "shared [B]", ScoreSde.CSharp.LangevinNorm.BatchMean
                        "0-d per-sample", ScoreSde.CSharp.LangevinNorm.PerSample
                        "shared [B] per-sample", ScoreSde.CSharp.LangevinNorm.PerSample ] do
                      use g0 = generator 6L
                      use x = torch.randn (shape, dtype = dtype, generator = g0)
                      use out = torch.randn (shape, dtype = dtype, generator = g0)
                      use t = if mode.StartsWith "0-d" then torch.tensor (0.5, dtype = dtype) else full [| 3L |] 0.5 dtype
                      use g = generator 44L
                      let r = s.StepCorrect(out, x, t, g, snr, langevinNorm)
                      use sample = r.PrevSample
                      use mean = r.PrevSampleMean
                      use g2 = generator 44L
                      use zt = torch.randn (shape, dtype = dtype, generator = g2)
                      let xs, os, zs = values x, values out, values zt
                      let grad = os |> Array.map (fun o -> -o / sigmaOf 0.5)
                      let per = xs.Length / 3
                      let norm (v: float[]) k = sqrt (Array.sub v (k * per) per |> Array.sumBy (fun a -> a * a))
                      let ms, ss = values mean, values sample
                      // batch-mean norms: the averages of the per-sample norms (the paper's code)
                      let mean (v: float[]) = Array.init 3 (norm v) |> Array.average
                      for i in 0 .. xs.Length - 1 do
                          let k = i / per
                          let e =
                              if langevinNorm = ScoreSde.CSharp.LangevinNorm.PerSample then
                                  2.0 * alphaI * (snr * norm zs k / norm grad k) ** 2.0
                              else
                                  2.0 * alphaI * (snr * mean zs / mean grad) ** 2.0
                          let m = xs.[i] + e * grad.[i]
                          let tol = if dtype = torch.float32 then 1e-5 * (1.0 + abs m) else 1e-11 * (1.0 + abs m)
                          close tol ms.[i] m (sprintf "%A %s mean[%d] (seeds 6, 44)" dtype mode i)
                          close tol ss.[i] (m + sqrt (2.0 * e) * zs.[i]) (sprintf "%A %s sample[%d] (seeds 6, 44)" dtype mode i)
          }

          testPropertyWithConfig
              { propConfig with maxTest = 40 }
              "the fused one-pass kernels equal a x + b y + c z in float64 (any size, aliasing, 1 and 2 threads)"
              (fun (Seed seed) (PositiveInt size) (coef: int * int * int) ->
                  // sizes up to 5,000 elements (SIMD body and scalar tail) and above 262,144 (the chunked
                  // two-thread split)
                  let n = int64 (if size % 3 = 0 then 262144 + (size * 7919) % 40000 else (size * 7919) % 5000 + 1)
                  let ia, ib, ic = coef
                  let a, b, c = 1.0 + float (ia % 1000) / 997.0, float (ib % 1000) / 331.0 - 1.5, float (ic % 1000) / 1999.0
                  let threads = torch.get_num_threads ()
                  try
                      for th in [ 1; 2 ] do
                          torch.set_num_threads th
                          for dtype in dtypes do
                              use g = generator seed
                              use x = torch.randn ([| n |], dtype = dtype, generator = g)
                              use y = torch.randn ([| n |], dtype = dtype, generator = g)
                              use z = torch.randn ([| n |], dtype = dtype, generator = g)
                              let xs, ys, zs = values x, values y, values z
                              let what k =
                                  sprintf "%A, %d thread(s), n = %d, a b c = %g %g %g, element %d (seed %d)" dtype th n a b c k seed
                              let check (t: Tensor) (expected: int -> float) (label: string) =
                                  let v = values t
                                  // float32: three rounded products and two sums of magnitudes up to ~15 (|x| < 6)
                                  let tol i =
                                      if dtype = torch.float32 then
                                          1e-6 * (1.0 + abs a * abs xs.[i] + abs b * abs ys.[i] + abs c * abs zs.[i]) * 4.0
                                      else
                                          1e-14 * (1.0 + abs a * abs xs.[i] + abs b * abs ys.[i] + abs c * abs zs.[i]) * 4.0
                                  match Array.tryFindIndex (fun i -> not (abs (v.[i] - expected i) <= tol i)) [| 0 .. v.Length - 1 |] with
                                  | Some i -> close (tol i) v.[i] (expected i) (label + " " + what i)
                                  | None -> ()
                              // a fresh output
                              use d = torch.empty_like (x)
                              Expect.isTrue (Fused.tryLinear d a x b y c z) "eligible tensors are fused"
                              check d (fun i -> a * xs.[i] + b * ys.[i] + c * zs.[i]) "fresh"
                              Expect.isTrue (Fused.tryLinear d a x b y 0.0 null) "two terms"
                              check d (fun i -> a * xs.[i] + b * ys.[i]) "two terms"
                              // in place on x, on y and on z (each element only reads its own index)
                              for k, target in [ 0, x; 1, y; 2, z ] do
                                  use x2 = x.clone ()
                                  use y2 = y.clone ()
                                  use z2 = z.clone ()
                                  let dst =
                                      match k with
                                      | 0 -> x2
                                      | 1 -> y2
                                      | _ -> z2
                                  Expect.isTrue (Fused.tryLinear dst a x2 b y2 c z2) "aliased output is fused"
                                  check dst (fun i -> a * xs.[i] + b * ys.[i] + c * zs.[i]) (sprintf "in place on input %d" k)
                              // mean and sample of a step, the noise already in the sample
                              use mean = torch.empty_like (x)
                              use sample = z.clone ()
                              Expect.isTrue (Fused.tryMeanAndSample mean sample a x b y c) "mean and sample fused"
                              check mean (fun i -> a * xs.[i] + b * ys.[i]) "mean"
                              check sample (fun i -> a * xs.[i] + b * ys.[i] + c * zs.[i]) "sample"
                              // the inputs the caller owns are untouched
                              Expect.isTrue (values x = xs && values y = ys && values z = zs) "inputs unchanged"
                  finally
                      torch.set_num_threads threads)

          test "the fused kernels read and write contiguous views at their storage offset" {
              for dtype in dtypes do
                  use g = generator 19L
                  use big = torch.randn ([| 100L |], dtype = dtype, generator = g)
                  use x = big.narrow (0L, 7L, 40L) // contiguous, offset 7
                  use y = big.narrow (0L, 60L, 40L) // contiguous, offset 60
                  use dstStore = torch.zeros ([| 50L |], dtype = dtype)
                  use dst = dstStore.narrow (0L, 5L, 40L)
                  let bs = values big
                  Expect.isTrue (Fused.tryLinear dst 2.0 x -0.5 y 0.0 null) "fused"
                  let d = values dstStore
                  for i in 0..49 do
                      let expected = if i >= 5 && i < 45 then 2.0 * bs.[7 + i - 5] - 0.5 * bs.[60 + i - 5] else 0.0
                      close
                          (if dtype = torch.float32 then 1e-5 else 1e-14)
                          d.[i]
                          expected
                          (sprintf "%A element %d of the output's storage (seed 19)" dtype i)
                  Expect.equal (values big) bs "inputs unchanged"
          }

          testPropertyWithConfig
              { propConfig with maxTest = 30 }
              "the row-wise kernels equal per-sample sums of squares and x + b_r y + c_r z in float64"
              (fun (Seed seed) (PositiveInt rows) (PositiveInt len) ->
                  let rows, len = int64 (rows % 9 + 1), int64 (len % 700 + 1)
                  for dtype in dtypes do
                      use g = generator seed
                      use x = torch.randn ([| rows; len |], dtype = dtype, generator = g)
                      use y = torch.randn ([| rows; len |], dtype = dtype, generator = g)
                      use z = torch.randn ([| rows; len |], dtype = dtype, generator = g)
                      let xs, ys, zs = values x, values y, values z
                      let n = int len
                      let what i = sprintf "%A, %d rows of %d, element %d (seed %d)" dtype rows len i seed
                      match Fused.tryRowSumSquares y with
                      | None -> failtest "eligible tensor refused"
                      | Some sums ->
                          for r in 0 .. int rows - 1 do
                              let expected = Array.sub ys (r * n) n |> Array.sumBy (fun v -> v * v)
                              // float32: squares summed in float32 over blocks of 32 per SIMD lane (each
                              // block's total in float64): at most ~32 roundings of 6e-8 relative
                              closeRel (if dtype = torch.float32 then 2e-6 else 1e-12) sums.[r] expected (what r + " sum of squares")
                      let b = Array.init (int rows) (fun r -> 0.3 * float r - 1.0)
                      let c = Array.init (int rows) (fun r -> 0.1 + 0.05 * float r)
                      Expect.isTrue (Fused.tryRowUpdate x b y c z) "fused"
                      let v = values x
                      for i in 0 .. v.Length - 1 do
                          let r = i / n
                          let expected = xs.[i] + b.[r] * ys.[i] + c.[r] * zs.[i]
                          let tol =
                              if dtype = torch.float32 then
                                  4e-6 * (1.0 + abs xs.[i] + abs ys.[i] + abs zs.[i])
                              else
                                  1e-14 * (1.0 + abs expected)
                          if abs (v.[i] - expected) > tol then
                              close tol v.[i] expected (what i)
                      Expect.isFalse (Fused.tryRowUpdate x b x c z) "x aliasing y is refused")

          test "the Langevin corrector gives the same step on a non-contiguous state (tensor-operation path)" {
              for dtype in dtypes do
                  for corrector in
                      [ Corrector.langevin 0.16 1
                        Corrector.Langevin { Snr = 0.2; Steps = 1; Norm = LangevinNorm.BatchMean } ] do
                      let model = Model.noise (fun (x: Tensor) _ -> x * 0.7 - 0.2)
                      use g0 = generator 20L
                      use x0 = torch.randn ([| 4L; 3L; 5L |], dtype = dtype, generator = g0)
                      use tb = full [| 4L |] 0.4 dtype
                      let step (x: Tensor) =
                          use z = torch.empty_like (x0)
                          use g = generator 21L
                          Corrector.correctInPlace sde corrector model x tb z (Noise.fromGenerator g) 0.4 0.97 false |> ignore
                      use fused = x0.clone ()
                      step fused
                      use storage = x0.transpose(1L, 2L).contiguous()
                      use strided = storage.transpose (1L, 2L)
                      Expect.isFalse (strided.is_contiguous ()) "layout under test"
                      step strided
                      let a, b = values fused, values strided
                      let tol = if dtype = torch.float32 then 1e-5 else 1e-12
                      closeElements tol b a (fun i -> sprintf "%A %s element %d (seeds 20, 21)" dtype (Corrector.name corrector) i)
          }

          test "time buffers are filled in place, only where they lie (contiguous, offset and strided views, any dtype)" {
              for dtype in [ torch.float32; torch.float64; torch.float16 ] do
                  use store = torch.zeros ([| 12L |], dtype = dtype)
                  use offset = store.narrow (0L, 2L, 4L) // contiguous at offset 2
                  use strided = store.narrow(0L, 7L, 4L).view(2L, 2L).t() // non-contiguous
                  Tensors.fillHost offset 0.375
                  Tensors.fillHost strided -1.5
                  let v = values store
                  let expected = [| 0.0; 0.0; 0.375; 0.375; 0.375; 0.375; 0.0; -1.5; -1.5; -1.5; -1.5; 0.0 |]
                  Expect.equal v expected (sprintf "%A: storage after the fills" dtype)
          }

          test "the fused kernels refuse what they cannot do in one pass, leaving every tensor untouched" {
              use g = generator 8L
              use x = torch.randn ([| 6L; 4L |], generator = g)
              use y = torch.randn ([| 6L; 4L |], generator = g)
              use x64 = x.to_type (torch.float64)
              use xt = x.t ()
              use xg = x.clone().requires_grad_(true)
              use big = torch.randn ([| 30L |], generator = g)
              use shifted = big.narrow (0L, 1L, 24L)
              use head = big.narrow (0L, 0L, 24L)
              use halfX = torch.randn ([| 6L; 4L |], dtype = torch.float16, generator = g)
              use small = torch.randn ([| 5L |], generator = g)
              let cases =
                  [ "mixed dtypes", (fun () -> Fused.tryLinear x 1.5 x64 2.0 y 0.0 null)
                    "non-contiguous input", (fun () -> Fused.tryLinear x 1.5 xt 2.0 y 0.0 null)
                    "input in an autograd graph", (fun () -> Fused.tryLinear x 1.5 xg 2.0 y 0.0 null)
                    "output partly overlapping an input",
                    (fun () -> Fused.tryLinear (shifted.view (6L, 4L)) 1.5 (head.view (6L, 4L)) 2.0 y 0.0 null)
                    "float16", (fun () -> Fused.tryLinear halfX 1.5 halfX 2.0 halfX 0.0 null)
                    "sizes that differ", (fun () -> Fused.tryLinear x 1.5 x 2.0 small 0.0 null)
                    "mean aliasing x", (fun () -> Fused.tryMeanAndSample x y 1.5 x 2.0 y 0.5) ]
              let snapshot () = [ values x; values y; values big; values halfX ]
              let before = snapshot ()
              for name, run in cases do
                  Expect.isFalse (run ()) (name + ": refused")
              Expect.equal (snapshot ()) before "nothing was written"
          } ]
