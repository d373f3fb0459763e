module ScoreSde.Tests.FacadeTests

open System
open Expecto
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Tests.Common

let private gauss = PredictorTests.gauss
let private coreSde = ScoreSde.VpSde.standard

/// The exact Gaussian model as a C# delegate.
let private model = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel coreSde gauss)

[<Tests>]
let tests =
    testList "C# facade: VpSde and Sampler" [
        test "VpSde exposes the closed forms" {
            let sde = VpSde()
            close 1e-15 (sde.Beta 0.5) (0.1 + 0.5 * 19.9) "beta"
            let m = -0.25 * 0.09 * 19.9 - 0.5 * 0.3 * 0.1
            closeRel 1e-14 (sde.Alpha 0.3) (exp m) "alpha"
            closeRel 1e-14 (sde.Sigma 0.3) (sqrt (1.0 - exp (2.0 * m))) "sigma"
            closeRel 1e-12 (sde.Lambda 0.3) (m - 0.5 * log (1.0 - exp (2.0 * m))) "lambda"
            Expect.throwsT<ArgumentException> (fun () -> VpSde(betaMin = -1.0) |> ignore) "bad betaMin"
        }

        test "PredictorCorrector samples the Gaussian with the requested dtype, shape and NFE" {
            for predictor, corrector, steps in [ Predictor.ReverseDiffusion, Corrector.Langevin, 300
                                                 Predictor.EulerMaruyama, Corrector.None, 300
                                                 Predictor.AncestralSampling, Corrector.AnnealedLangevin, 300 ] do
                use g = generator 17L
                let opts = PcOptions(Steps = steps, Predictor = predictor, Corrector = corrector, Dtype = torch.float64)
                let model64 = Func<Tensor, Tensor, Tensor>(gaussianNoiseModel coreSde gauss64)
                let r = Sampler.PredictorCorrector(VpSde(), model64, [| 4000L; 64L |], opts, g)
                use x = r.Samples
                Expect.equal x.dtype torch.float64 "dtype"
                Expect.equal x.shape [| 4000L; 64L |] "shape"
                Expect.equal r.Nfe (steps * (if corrector = Corrector.None then 1 else 2)) "NFE"
                let ms, ss = moments x
                // Monte Carlo floor ~0.015 plus the per-sample Langevin bias (see the corrector tests)
                Expect.isLessThan (averageMomentError gauss64 ms ss) 0.04 (sprintf "%A+%A moments (seed 17)" predictor corrector)
        }

        test "a score model is declared with Prediction = Score" {
            use g = generator 18L
            let scoreModel = Func<Tensor, Tensor, Tensor>(gaussianScoreModel coreSde gauss)
            let opts = PcOptions(Steps = 300, Prediction = ModelPrediction.Score, Corrector = Corrector.None)
            let r = Sampler.PredictorCorrector(VpSde(), scoreModel, [| 20000L; 4L |], opts, g)
            use x = r.Samples
            let ms, ss = moments x
            for d in 0 .. 3 do
                close 0.03 ms.[d] gauss.Mu.[d] (sprintf "mean %d (seed 18)" d)
                close 0.03 ss.[d] gauss.S.[d] (sprintf "std %d (seed 18)" d)
        }

        test "the same generator seed reproduces the same samples" {
            let run () =
                use g = generator 5L
                let r = Sampler.PredictorCorrector(VpSde(), model, [| 3L; 4L |], PcOptions(Steps = 20), g)
                let v = values r.Samples
                r.Samples.Dispose()
                v
            Expect.sequenceEqual (run ()) (run ()) "reproducible"
        }

        test "bad options are rejected naming the option" {
            let expectArg (name: string) (f: unit -> obj) =
                try
                    f () |> ignore
                    failtestf "expected an ArgumentException for %s" name
                with :? ArgumentException as e -> Expect.equal e.ParamName name (sprintf "parameter %s" name)
            let run (opts: PcOptions) (shape: int64[]) = box (Sampler.PredictorCorrector(VpSde(), model, shape, opts))
            expectArg "options.Steps" (fun () -> run (PcOptions(Steps = 0)) [| 2L; 4L |])
            expectArg "eps" (fun () -> run (PcOptions(Eps = 0.0)) [| 2L; 4L |])
            expectArg "snr" (fun () -> run (PcOptions(Snr = 0.0)) [| 2L; 4L |])
            expectArg "correctorSteps" (fun () -> run (PcOptions(CorrectorSteps = 0)) [| 2L; 4L |])
            expectArg "shape" (fun () -> run (PcOptions()) [| 0L; 4L |])
            expectArg "shape" (fun () -> run (PcOptions()) null)
            expectArg "options.Dtype" (fun () -> run (PcOptions(Dtype = torch.int32)) [| 2L; 4L |])
            expectArg "options.Predictor" (fun () -> run (PcOptions(Predictor = enum 42)) [| 2L; 4L |])
            expectArg "model" (fun () -> box (Sampler.PredictorCorrector(VpSde(), null, [| 2L |], PcOptions())))
            expectArg "options" (fun () -> box (Sampler.PredictorCorrector(VpSde(), model, [| 2L |], null)))
        }
    ]
