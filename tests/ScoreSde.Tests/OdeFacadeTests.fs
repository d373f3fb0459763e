module ScoreSde.Tests.OdeFacadeTests

open System
open Expecto
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Tests.Common

let private gauss = PredictorTests.gauss
let private coreSde = ScoreSde.Sde.standardVp
let private model = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel coreSde gauss)

let private maxAbsDiff (a: float[]) (b: float[]) = Array.map2 (fun x y -> abs (x - y)) a b |> Array.max

let private expectArg (name: string) (f: unit -> obj) =
    try
        f () |> ignore
        failtestf "expected an ArgumentException for %s" name
    with :? ArgumentException as e ->
        Expect.equal e.ParamName name (sprintf "parameter %s" name)

[<Tests>]
let tests =
    testList
        "C# facade: probability-flow ODE and likelihood"
        [ test "ProbabilityFlow maps every solver to the core's, with the requested NFE, dtype and shape" {
              use g = generator 59L
              use latent = torch.randn ([| 500L; 4L |], dtype = torch.float64, generator = g)
              let coreModel = ScoreSde.Model.noise (gaussianNoiseModel coreSde gauss)
              for solver, core, steps in
                  [ OdeSolver.Euler, ScoreSde.OdeSolver.Euler, 30
                    OdeSolver.Heun, ScoreSde.OdeSolver.Heun, 20
                    OdeSolver.Rk4, ScoreSde.OdeSolver.Rk4, 10 ] do
                  let r =
                      Sampler.ProbabilityFlow(
                          VpSde(),
                          model,
                          latent.shape,
                          OdeOptions(Solver = solver, Steps = steps, Dtype = torch.float64, Latent = latent)
                      )
                  use x = r.Samples
                  let expected =
                      ScoreSde.Sampler.sample
                          coreSde
                          coreModel
                          (fixedFlow core ScoreSde.TimeGrid.Uniform steps 1e-3)
                          (unusedNoise ())
                          latent
                  use e = expected.Samples
                  Expect.equal r.Nfe expected.Nfe (sprintf "%A NFE" solver)
                  Expect.equal r.Nfe (steps * ScoreSde.OdeSolver.evaluationsPerStep core) "evaluations per step"
                  // the same method; the drift is evaluated with device-side coefficients (per-sample times)
                  // instead of host ones, so the two agree to float64 rounding
                  Expect.isLessThan (maxAbsDiff (values x) (values e)) 1e-12 (sprintf "%A: the core's samples" solver)
          }

          test "ProbabilityFlow with Dopri5 from prior noise reproduces the flow's moments" {
              use g = generator 60L
              let n = 4000
              let r = Sampler.ProbabilityFlow(VpSde(), model, [| int64 n; 4L |], OdeOptions(), g)
              use x = r.Samples
              Expect.equal x.dtype torch.float32 "default dtype"
              Expect.equal x.shape [| int64 n; 4L |] "shape"
              let ms, ss = moments x
              for d in 0..3 do
                  // the prior-to-eps flow map is linear (ProbabilityFlowTests): mean exactFlow(0), std
                  // sqrt(v_eps / v_1); 5 standard errors of each, the solver's error (~1e-5) is negligible
                  let _, v1 = gauss.MarginalAt coreSde 1.0 d
                  let _, ve = gauss.MarginalAt coreSde 1e-3 d
                  let sd = sqrt (ve / v1)
                  close (5.0 * sd / sqrt (float n)) ms.[d] (OdeSolverTests.exactFlow 0.0 d 1.0 1e-3) (sprintf "mean dim %d (seed 60)" d)
                  close (5.0 * sd / sqrt (2.0 * float n)) ss.[d] sd (sprintf "std dim %d (seed 60)" d)
          }

          test "a given latent is decoded (copied, not modified); Encode inverts it" {
              use g = generator 61L
              use x0 =
                  torch.randn ([| 32L; 4L |], dtype = torch.float64, generator = g) * 0.4
                  + torch.tensor (gauss.Mu, dtype = torch.float64)
              let opts = OdeOptions(Rtol = 1e-8, Atol = 1e-8, Dtype = torch.float64, PerSampleStepControl = true)
              let enc = Sampler.Encode(VpSde(), model, x0, opts)
              use z = enc.Latent
              use zCopy = z.clone ()
              let dec =
                  Sampler.ProbabilityFlow(
                      VpSde(),
                      model,
                      z.shape,
                      OdeOptions(Rtol = 1e-8, Atol = 1e-8, Dtype = torch.float64, PerSampleStepControl = true, Latent = z)
                  )
              use back = dec.Samples
              Expect.isTrue (same z zCopy) "latent untouched"
              Expect.isLessThan (maxAbsDiff (values back) (values x0)) 1e-6 "decode(encode(x)) = x (seed 61)"
              Expect.isGreaterThan enc.Nfe 0 "encode evaluations"
              // the latent option is converted to the requested dtype
              let dec32 = Sampler.ProbabilityFlow(VpSde(), model, z.shape, OdeOptions(Latent = z))
              use b32 = dec32.Samples
              Expect.equal b32.dtype torch.float32 "converted to Dtype"
              Expect.isLessThan (maxAbsDiff (values b32) (values x0)) 2e-3 "float32 decode"
          }

          test "Likelihood.Compute matches the closed form; bits/dim use the offset; Hutchinson is reproducible" {
              use g = generator 62L
              use x =
                  torch.randn ([| 8L; 4L |], dtype = torch.float64, generator = g) * 0.4
                  + torch.tensor (gauss.Mu, dtype = torch.float64)
              use r = Likelihood.Compute(VpSde(), model, x, LikelihoodOptions(DequantizationOffset = 7.0))
              let lp, bpd = values r.LogLikelihood, values r.BitsPerDim
              let xs = values x
              for i in 0..7 do
                  // independent closed form: the exact flow from eps to 1 is linear per dimension
                  let mutable expected = 0.0
                  for d in 0..3 do
                      let _, ve = gauss.MarginalAt coreSde 1e-5 d
                      let _, v1 = gauss.MarginalAt coreSde 1.0 d
                      let z = OdeSolverTests.exactFlow xs.[4 * i + d] d 1e-5 1.0
                      expected <- expected - 0.5 * log (2.0 * Math.PI) - 0.5 * z * z + 0.5 * log (v1 / ve)
                  close 1e-3 lp.[i] expected (sprintf "log p sample %d (seed 62)" i)
                  close 1e-12 bpd.[i] (-lp.[i] / (4.0 * log 2.0) + 7.0) "bits/dim"
              Expect.equal r.Latent.shape x.shape "latent"
              let hutch seed =
                  use gen = generator seed
                  use h =
                      Likelihood.Compute(
                          VpSde(),
                          model,
                          x,
                          LikelihoodOptions(Estimator = DivergenceEstimator.HutchinsonGaussian, Probes = 2),
                          gen
                      )
                  values h.LogLikelihood
              Expect.sequenceEqual (hutch 63L) (hutch 63L) "same generator seed, same estimate"
              Expect.isFalse (hutch 63L = hutch 64L) "another seed, other probes"
          }

          test "bad options are rejected naming the option" {
              let sample (o: OdeOptions) (shape: int64[]) = box (Sampler.ProbabilityFlow(VpSde(), model, shape, o))
              use data = torch.zeros ([| 2L; 4L |])
              let like (o: LikelihoodOptions) = box (Likelihood.Compute(VpSde(), model, data, o))
              expectArg "options.Steps" (fun () -> sample (OdeOptions(Steps = 0, Solver = OdeSolver.Rk4)) [| 2L; 4L |])
              expectArg "options.Rtol" (fun () -> sample (OdeOptions(Rtol = 0.0)) [| 2L; 4L |])
              expectArg "options.Rtol" (fun () -> sample (OdeOptions(Rtol = 1.5)) [| 2L; 4L |])
              expectArg "options.Atol" (fun () -> sample (OdeOptions(Atol = Double.NaN)) [| 2L; 4L |])
              expectArg "options.MaxSteps" (fun () -> sample (OdeOptions(MaxSteps = 0)) [| 2L; 4L |])
              expectArg "options.Eps" (fun () -> sample (OdeOptions(Eps = 1.0)) [| 2L; 4L |])
              expectArg "options.Solver" (fun () -> sample (OdeOptions(Solver = enum 9)) [| 2L; 4L |])
              expectArg "options.Dtype" (fun () -> sample (OdeOptions(Dtype = torch.int64)) [| 2L; 4L |])
              expectArg "options.Latent" (fun () -> sample (OdeOptions(Latent = torch.zeros ([| 3L; 4L |]))) [| 2L; 4L |])
              expectArg "options.Latent" (fun () ->
                  sample (OdeOptions(Latent = torch.zeros ([| 2L; 4L |], dtype = torch.int32))) [| 2L; 4L |])
              expectArg "shape" (fun () -> sample (OdeOptions()) [| 0L; 4L |])
              expectArg "options" (fun () -> box (Sampler.ProbabilityFlow(VpSde(), model, [| 2L |], null)))
              expectArg "options.Latent" (fun () -> box (Sampler.Encode(VpSde(), model, data, OdeOptions(Latent = data))))
              expectArg "options.Denoise" (fun () -> box (Sampler.Encode(VpSde(), model, data, OdeOptions(Denoise = true))))
              expectArg "data" (fun () -> box (Sampler.Encode(VpSde(), model, torch.zeros ([| 2L |], dtype = torch.int64), OdeOptions())))
              expectArg "options.Probes" (fun () ->
                  like (LikelihoodOptions(Estimator = DivergenceEstimator.HutchinsonRademacher, Probes = 0)))
              expectArg "options.Eps" (fun () -> like (LikelihoodOptions(Eps = 0.0)))
              expectArg "options.Rtol" (fun () -> like (LikelihoodOptions(Rtol = -1.0)))
              expectArg "options.Estimator" (fun () -> like (LikelihoodOptions(Estimator = enum 7)))
              expectArg "options.DequantizationOffset" (fun () -> like (LikelihoodOptions(DequantizationOffset = Double.PositiveInfinity)))
              expectArg "data" (fun () -> box (Likelihood.Compute(VpSde(), model, null, LikelihoodOptions())))
              expectArg "model" (fun () -> box (Likelihood.Compute(VpSde(), null, data, LikelihoodOptions())))
          } ]
