module ScoreSde.Tests.OdeFacadeTests

open System
open Expecto
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Tests.Common

let private gauss = PredictorTests.gauss
let private coreSde = ScoreSde.VpSde.standard
let private model = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel coreSde gauss)

let private maxAbsDiff (a: float[]) (b: float[]) = Array.map2 (fun x y -> abs (x - y)) a b |> Array.max

let private expectArg (name: string) (f: unit -> obj) =
    try
        f () |> ignore
        failtestf "expected an ArgumentException for %s" name
    with :? ArgumentException as e -> Expect.equal e.ParamName name (sprintf "parameter %s" name)

[<Tests>]
let tests =
    testList "C# facade: probability-flow ODE and likelihood" [
        test "ProbabilityFlow samples with every solver; NFE, dtype and shape as requested" {
            for solver, steps, nfe in [ OdeSolver.Euler, 300, Some 300; OdeSolver.Heun, 150, Some 300; OdeSolver.Rk4, 60, Some 240; OdeSolver.Dopri5, 0, None ] do
                use g = generator 60L
                let opts = OdeOptions(Solver = solver, Steps = max steps 1, Dtype = torch.float64)
                let r = Sampler.ProbabilityFlow(VpSde(), model, [| 4000L; 4L |], opts, g)
                use x = r.Samples
                Expect.equal x.dtype torch.float64 "dtype"
                Expect.equal x.shape [| 4000L; 4L |] "shape"
                nfe |> Option.iter (fun n -> Expect.equal r.Nfe n (sprintf "%A NFE" solver))
                let ms, _ = moments x
                // the prior-to-eps flow map's mean (ProbabilityFlowTests) within 5 standard errors plus each
                // solver's discretisation error at these step counts (Euler's O(1/N) ~ 0.01)
                for d in 0 .. 3 do
                    let _, v1 = gauss.MarginalAt coreSde 1.0 d
                    let _, ve = gauss.MarginalAt coreSde 1e-3 d
                    close (0.015 + 5.0 * sqrt (ve / v1) / sqrt 4000.0) ms.[d] (OdeSolverTests.exactFlow 0.0 d 1.0 1e-3) (sprintf "%A mean dim %d (seed 60)" solver d)
        }

        test "a given latent is decoded (copied, not modified); Encode inverts it" {
            use g = generator 61L
            use x0 = torch.randn([| 32L; 4L |], dtype = torch.float64, generator = g) * 0.4 + torch.tensor(gauss.Mu, dtype = torch.float64)
            let opts = OdeOptions(Rtol = 1e-8, Atol = 1e-8, Dtype = torch.float64, PerSampleStepControl = true)
            let enc = Sampler.Encode(VpSde(), model, x0, opts)
            use z = enc.Latent
            use zCopy = z.clone()
            let dec = Sampler.ProbabilityFlow(VpSde(), model, z.shape, OdeOptions(Rtol = 1e-8, Atol = 1e-8, Dtype = torch.float64, PerSampleStepControl = true, Latent = z))
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
            use x = torch.randn([| 8L; 4L |], dtype = torch.float64, generator = g) * 0.4 + torch.tensor(gauss.Mu, dtype = torch.float64)
            use r = Likelihood.Compute(VpSde(), model, x, LikelihoodOptions(DequantizationOffset = 7.0))
            let lp, bpd = values r.LogLikelihood, values r.BitsPerDim
            let xs = values x
            for i in 0 .. 7 do
                // independent closed form: the exact flow from eps to 1 is linear per dimension
                let mutable expected = 0.0
                for d in 0 .. 3 do
                    let _, ve = gauss.MarginalAt coreSde 1e-5 d
                    let _, v1 = gauss.MarginalAt coreSde 1.0 d
                    let z = OdeSolverTests.exactFlow xs.[4 * i + d] d 1e-5 1.0
                    expected <- expected - 0.5 * log (2.0 * Math.PI) - 0.5 * z * z + 0.5 * log (v1 / ve)
                close 1e-3 lp.[i] expected (sprintf "log p sample %d (seed 62)" i)
                close 1e-12 bpd.[i] (-lp.[i] / (4.0 * log 2.0) + 7.0) "bits/dim"
            Expect.equal r.Latent.shape x.shape "latent"
            let hutch seed =
                use gen = generator seed
                use h = Likelihood.Compute(VpSde(), model, x, LikelihoodOptions(Estimator = DivergenceEstimator.HutchinsonGaussian, Probes = 2), gen)
                values h.LogLikelihood
            Expect.sequenceEqual (hutch 63L) (hutch 63L) "same generator seed, same estimate"
            Expect.isFalse (hutch 63L = hutch 64L) "another seed, other probes"
        }

        test "bad options are rejected naming the option" {
            let sample (o: OdeOptions) (shape: int64[]) = box (Sampler.ProbabilityFlow(VpSde(), model, shape, o))
            use data = torch.zeros([| 2L; 4L |])
            let like (o: LikelihoodOptions) = box (Likelihood.Compute(VpSde(), model, data, o))
            expectArg "options.Steps" (fun () -> sample (OdeOptions(Steps = 0, Solver = OdeSolver.Rk4)) [| 2L; 4L |])
            expectArg "options.Rtol" (fun () -> sample (OdeOptions(Rtol = 0.0)) [| 2L; 4L |])
            expectArg "options.Rtol" (fun () -> sample (OdeOptions(Rtol = 1.5)) [| 2L; 4L |])
            expectArg "options.Atol" (fun () -> sample (OdeOptions(Atol = Double.NaN)) [| 2L; 4L |])
            expectArg "options.MaxSteps" (fun () -> sample (OdeOptions(MaxSteps = 0)) [| 2L; 4L |])
            expectArg "options.Eps" (fun () -> sample (OdeOptions(Eps = 1.0)) [| 2L; 4L |])
            expectArg "options.Solver" (fun () -> sample (OdeOptions(Solver = enum 9)) [| 2L; 4L |])
            expectArg "options.Dtype" (fun () -> sample (OdeOptions(Dtype = torch.int64)) [| 2L; 4L |])
            expectArg "options.Latent" (fun () -> sample (OdeOptions(Latent = torch.zeros([| 3L; 4L |]))) [| 2L; 4L |])
            expectArg "options.Latent" (fun () -> sample (OdeOptions(Latent = torch.zeros([| 2L; 4L |], dtype = torch.int32))) [| 2L; 4L |])
            expectArg "shape" (fun () -> sample (OdeOptions()) [| 0L; 4L |])
            expectArg "options" (fun () -> box (Sampler.ProbabilityFlow(VpSde(), model, [| 2L |], null)))
            expectArg "options.Latent" (fun () -> box (Sampler.Encode(VpSde(), model, data, OdeOptions(Latent = data))))
            expectArg "options.Denoise" (fun () -> box (Sampler.Encode(VpSde(), model, data, OdeOptions(Denoise = true))))
            expectArg "data" (fun () -> box (Sampler.Encode(VpSde(), model, torch.zeros([| 2L |], dtype = torch.int64), OdeOptions())))
            expectArg "options.Probes" (fun () -> like (LikelihoodOptions(Probes = 0)))
            expectArg "options.Eps" (fun () -> like (LikelihoodOptions(Eps = 0.0)))
            expectArg "options.Rtol" (fun () -> like (LikelihoodOptions(Rtol = -1.0)))
            expectArg "options.Estimator" (fun () -> like (LikelihoodOptions(Estimator = enum 7)))
            expectArg "options.DequantizationOffset" (fun () -> like (LikelihoodOptions(DequantizationOffset = Double.PositiveInfinity)))
            expectArg "data" (fun () -> box (Likelihood.Compute(VpSde(), model, null, LikelihoodOptions())))
            expectArg "model" (fun () -> box (Likelihood.Compute(VpSde(), null, data, LikelihoodOptions())))
        }
    ]
