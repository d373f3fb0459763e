module ScoreSde.Tests.PredictorTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let gauss = { Mu = [| 1.0; -0.5; 0.0; 2.0 |]; S = [| 0.5; 1.0; 0.2; 0.3 |] }

// Independent float64 formulas of each predictor's step t -> s (REFERENCE.md, the paper's code), written
// here without the library: returns (A, B, C) with x' = A x + B score + C z.
let private referenceStep (sde: Sde) (name: string) (t: float) (s: float) =
    let dt = t - s
    let at, st = marginalCoefficients sde t
    let as', ss = marginalCoefficients sde s
    // f(t) and g(t)^2 (Song et al. 2021, appendix B and the paper's sde_lib)
    let f, g2 =
        match sde with
        | Sde.Vp _ -> -0.5 * betaOf sde t, betaOf sde t
        | Sde.SubVp _ -> -0.5 * betaOf sde t, betaOf sde t * (1.0 - at ** 4.0)
        | Sde.Ve v -> 0.0, 2.0 * log (v.SigmaMax / v.SigmaMin) * st * st
    // the interval's DDPM beta_i = 1 - (alpha_t / alpha_s)^2, SMLD's sigma_t^2 - sigma_s^2
    let bi = 1.0 - (at / as') ** 2.0
    let dv = st * st - ss * ss
    match name, sde with
    | "EM", _
    | "RD", Sde.SubVp _ -> 1.0 - f * dt, g2 * dt, sqrt (g2 * dt)
    | "RD", Sde.Vp _ -> 2.0 - sqrt (1.0 - bi), bi, sqrt bi
    | "RD", Sde.Ve _ -> 1.0, dv, sqrt dv
    | "AS", Sde.Vp _ -> 1.0 / sqrt (1.0 - bi), bi / sqrt (1.0 - bi), sqrt bi
    | "AS", Sde.Ve _ -> 1.0, dv, sqrt (ss * ss * dv / (st * st))
    | "AS", _ ->
        // the Gaussian posterior q(x_s | x_t, x0) at Tweedie's x0 = (x + sigma_t^2 score) / alpha_t
        let a = at / as'
        let v = st * st - a * a * ss * ss
        a * ss * ss / (st * st) + v / (a * st * st), v / a, sqrt (ss * ss * v / (st * st))
    | _ -> failwith name

/// Exact output moments (mean, variance) of dimension d for a linear-Gaussian run of predictor
/// `name` over `ts` from the prior N(0, std^2), with the exact Gaussian score s = -(x - a mu) / v.
let exactMoments (sde: Sde) (name: string) (ts: float[]) (denoise: bool) (d: int) =
    let mutable m, v = 0.0, Sde.priorStd sde ** 2.0
    for i in 0 .. ts.Length - 2 do
        let t, s = ts.[i], ts.[i + 1]
        let A, B, C = referenceStep sde name t s
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

let private runPc (sde: Sde) (predictor: Predictor) (steps: int) (seed: int64) (dtype: torch.ScalarType) (n: int64) =
    use g = generator seed
    let noise = Noise.fromGenerator g
    use xT = Sampler.prior sde [| n; int64 gauss.Dim |] dtype torch.CPU noise
    let sampling =
        { Sampling.pc with
            Method = Method.PredictorCorrector(predictor, Corrector.NoCorrector)
            Schedule = Schedule.uniform steps 1e-3 }
    Sampler.sample sde (Model.noise (gaussianNoiseModel sde gauss)) sampling noise xT

[<Tests>]
let tests =
    testList
        "Predictors"
        [ test "every predictor's samples have the exact moments of its discretisation (exact Gaussian score)" {
              let n = 20000L
              for sdeName, sde in allSdes do
                  for name, p in predictors do
                      for steps in [ 10; 100 ] do
                          let seed = 500L + int64 steps
                          let r = runPc sde p steps seed torch.float64 n
                          use x = r.Samples
                          Expect.equal r.Nfe steps "one evaluation per step"
                          let ms, ss = moments x
                          let ts = TimeGrid.points sde TimeGrid.Uniform steps 1e-3
                          for d in 0 .. gauss.Dim - 1 do
                              let m, v = exactMoments sde name ts true d
                              let sd = sqrt v
                              let what = sprintf "%s %s N=%d dim %d" sdeName name steps d
                              close (5.0 * sd / sqrt (float n)) ms.[d] m (sprintf "%s mean (seed %d)" what seed)
                              close (5.0 * sd / sqrt (2.0 * float n)) ss.[d] sd (sprintf "%s std (seed %d)" what seed)
          }

          test "every predictor converges to the data distribution as steps grow" {
              for sdeName, sde in allSdes do
                  for name, p in predictors do
                      let err steps =
                          let ts = TimeGrid.points sde TimeGrid.Uniform steps 1e-3
                          [ for d in 0 .. gauss.Dim - 1 do
                                let m, v = exactMoments sde name ts true d
                                // target: the marginal at eps (the sampler stops there)
                                let mt, vt = gauss.MarginalAt sde 1e-3 d
                                abs (m - mt) + abs (sqrt v - sqrt vt) ]
                          |> List.max
                      let errs = [ 10; 100; 1000 ] |> List.map err
                      Expect.isTrue (errs.[1] < errs.[0] && errs.[2] < errs.[1]) (sprintf "%s %s: errors %A shrink" sdeName name errs)
                      Expect.isLessThan errs.[2] 0.02 (sprintf "%s %s: error at 1000 steps" sdeName name)
                      // and the library's samples at 1000 steps land on the data moments (VP; the exact-moment
                      // test above checks every SDE's samples against its discretisation)
                      if sdeName = "VP" then
                          let n = 20000L
                          let r = runPc sde p 1000 77L torch.float32 n
                          use x = r.Samples
                          let ms, ss = moments x
                          for d in 0 .. gauss.Dim - 1 do
                              let s = gauss.S.[d]
                              close (0.02 + 5.0 * s / sqrt (float n)) ms.[d] gauss.Mu.[d] (sprintf "%s dim %d mean (seed 77)" name d)
                              close (0.02 + 5.0 * s / sqrt (2.0 * float n)) ss.[d] s (sprintf "%s dim %d std (seed 77)" name d)
          }

          test "step (fresh tensors) and the sampler's in-place step agree, and inputs are untouched" {
              for _, sde in allSdes do
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
              for name, sde in allSdes do
                  for _, p in predictors do
                      let r = runPc sde p 2 3L torch.float32 100L
                      use x = r.Samples
                      Expect.isTrue (allFinite x) (sprintf "%s %A finite" name p)
          } ]
