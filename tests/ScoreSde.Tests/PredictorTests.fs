module ScoreSde.Tests.PredictorTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = VpSde.standard
let gauss = { Mu = [| 1.0; -0.5; 0.0; 2.0 |]; S = [| 0.5; 1.0; 0.2; 0.3 |] }

// Independent float64 formulas of each predictor's step t -> s (REFERENCE.md), written here without
// the library: returns (A, B, C) with x' = A x + B score + C z.
let private hostAlpha (t: float) = Math.Exp(-0.25 * t * t * 19.9 - 0.05 * t)
let private referenceStep (name: string) (t: float) (s: float) =
    let beta t = 0.1 + 19.9 * t
    let dt = t - s
    // DDPM beta of the interval: 1 - alpha_s... written as 1 - (alpha_t / alpha_s)^2
    let bi = 1.0 - (hostAlpha t / hostAlpha s) ** 2.0
    match name with
    | "EM" -> 1.0 + 0.5 * beta t * dt, beta t * dt, sqrt (beta t * dt)
    | "RD" -> 2.0 - sqrt (1.0 - bi), bi, sqrt bi
    | "AS" -> 1.0 / sqrt (1.0 - bi), bi / sqrt (1.0 - bi), sqrt bi
    | _ -> failwith name

/// Exact output moments (mean, variance) of dimension d for a linear-Gaussian run of predictor
/// `name` over `ts` from N(0, 1), with the exact Gaussian score s = -(x - a mu) / v.
let exactMoments (name: string) (ts: float[]) (denoise: bool) (d: int) =
    let mutable m, v = 0.0, 1.0
    for i in 0 .. ts.Length - 2 do
        let t, s = ts.[i], ts.[i + 1]
        let A, B, C = referenceStep name t s
        let mt, vt = gauss.MarginalAt sde t d
        let k = A - B / vt
        m <- k * m + B * mt / vt
        let last = i = ts.Length - 2
        v <- k * k * v + (if last && denoise then 0.0 else C * C)
    m, v

let private predictors =
    [ "EM", Predictor.EulerMaruyama
      "RD", Predictor.ReverseDiffusion
      "AS", Predictor.AncestralSampling ]

let private runPc (predictor: Predictor) (steps: int) (seed: int64) (dtype: torch.ScalarType) (n: int64) =
    use g = generator seed
    let noise = Noise.fromGenerator g
    use xT = Sampler.prior [| n; int64 gauss.Dim |] dtype torch.CPU noise
    let settings = { Sampler.pcDefaults with Predictor = predictor; Corrector = Corrector.NoCorrector; Steps = steps }
    Sampler.predictorCorrector sde (Model.noise (gaussianNoiseModel sde gauss)) settings noise xT

[<Tests>]
let tests =
    testList
        "Predictors"
        [ test "every predictor's samples have the exact moments of its discretisation (exact Gaussian score)" {
              let n = 20000L
              for name, p in predictors do
                  for steps in [ 10; 100 ] do
                      let seed = 500L + int64 steps
                      let r = runPc p steps seed torch.float64 n
                      use x = r.Samples
                      Expect.equal r.Nfe steps "one evaluation per step"
                      let ms, ss = moments x
                      let ts = TimeGrid.points sde TimeGrid.Uniform steps 1e-3
                      for d in 0 .. gauss.Dim - 1 do
                          let m, v = exactMoments name ts true d
                          let sd = sqrt v
                          close (5.0 * sd / sqrt (float n)) ms.[d] m (sprintf "%s N=%d dim %d mean (seed %d)" name steps d seed)
                          close (5.0 * sd / sqrt (2.0 * float n)) ss.[d] sd (sprintf "%s N=%d dim %d std (seed %d)" name steps d seed)
          }

          test "every predictor converges to the data distribution as steps grow" {
              for name, p in predictors do
                  let err steps =
                      let ts = TimeGrid.points sde TimeGrid.Uniform steps 1e-3
                      [ for d in 0 .. gauss.Dim - 1 do
                            let m, v = exactMoments name ts true d
                            // target: the marginal at eps (the sampler stops there)
                            let mt, vt = gauss.MarginalAt sde 1e-3 d
                            abs (m - mt) + abs (sqrt v - sqrt vt) ]
                      |> List.max
                  let errs = [ 10; 100; 1000 ] |> List.map err
                  Expect.isTrue (errs.[1] < errs.[0] && errs.[2] < errs.[1]) (sprintf "%s: errors %A shrink" name errs)
                  Expect.isLessThan errs.[2] 0.02 (sprintf "%s: error at 1000 steps" name)
                  // and the library's samples at 1000 steps land on the data moments
                  let n = 20000L
                  let r = runPc p 1000 77L torch.float32 n
                  use x = r.Samples
                  let ms, ss = moments x
                  for d in 0 .. gauss.Dim - 1 do
                      let s = gauss.S.[d]
                      close (0.02 + 5.0 * s / sqrt (float n)) ms.[d] gauss.Mu.[d] (sprintf "%s dim %d mean (seed 77)" name d)
                      close (0.02 + 5.0 * s / sqrt (2.0 * float n)) ss.[d] s (sprintf "%s dim %d std (seed 77)" name d)
          }

          test "step (fresh tensors) and the sampler's in-place step agree, and inputs are untouched" {
              for _, p in predictors do
                  for dtype in [ torch.float32; torch.float64 ] do
                      use g0 = generator 5L
                      use x = torch.randn ([| 8L; 4L |], dtype = dtype, generator = g0)
                      use copy = x.clone ()
                      use g1 = generator 9L
                      use g2 = generator 9L
                      let model = Model.noise (gaussianNoiseModel sde gauss)
                      let r = Predictor.step sde p model x 0.7 0.65 (Noise.fromGenerator g1)
                      use inplace = x.clone ()
                      use z = torch.empty_like (x)
                      use tb = (full [| 8L |] (0.7) dtype)
                      Predictor.stepInPlace sde p model inplace tb z (Noise.fromGenerator g2) 0.7 0.65 true |> ignore
                      let tol = if dtype = torch.float32 then 1e-5 else 1e-12
                      Expect.isTrue (torch.allclose (r.Sample, inplace, tol, tol)) (sprintf "%A %A same sample" p dtype)
                      Expect.isTrue (same x copy) "x untouched"
                      r.Sample.Dispose()
                      r.Mean.Dispose()
          }

          test "no silent NaN: a 2-step grid with every predictor gives finite samples" {
              for _, p in predictors do
                  let r = runPc p 2 3L torch.float32 100L
                  use x = r.Samples
                  Expect.isTrue (allFinite x) (sprintf "%A finite" p)
          } ]
