/// Conditional sampling against exact conditional laws (issue 14, item 2): the sliced Wasserstein-1
/// distance of conditional samples to exact conditional samples of a Gaussian mixture (computed without
/// the library, tests/ScoreSde.Quality/Conditional.fs), against the noise floor of two exact sets. Small
/// sample sizes keep the suite fast; the full tables (10,000 samples, every SDE and sampler) are made by
/// `dotnet run --project tests/ScoreSde.Quality -c Release -- --conditional` (docs/conditional-results.md).
module ScoreSde.Tests.ConditionalLawTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Quality
open ScoreSde.Tests.Common

let private sde = Sde.standardVp
let private problem = Mixture.unequal16
let private n = 2000
let private eps = 1e-3

/// The first 8 of 16 coordinates known.
let private known = Array.init 8 id

let private maskOf () = torch.tensor(Array.init 16 (fun i -> if i < 8 then 1.0 else 0.0), dtype = torch.float64).reshape([| 1L; 16L |])

let private latent (seed: uint64) =
    use g = new torch.Generator(seed)
    torch.randn ([| int64 n; 16L |], dtype = torch.float64, generator = g)

let private pc steps =
    { pcRun Predictor.ReverseDiffusion (Corrector.Langevin { Snr = 0.16; Steps = 1; Norm = LangevinNorm.BatchMean }) steps with
        Schedule = Schedule.uniform steps eps }

let private dpm3m steps =
    { Sampling.dpmSolver with
        Method = Method.DpmSolver { DpmSolver.defaults with Algorithm = DpmAlgorithm.DpmSolver; Order = 3 }
        Schedule = Schedule.create TimeGrid.LogSnr steps eps }

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Conditional laws"
        [ test
              "the PC inpainter (fresh draws, reverse diffusion + Langevin, 1000 steps) is within 1.5x the noise floor; the probability flow with replacement is not" {
              // Problem (b) of the quality benchmark, each sample its own known values (the first 8
              // coordinates of an exact data sample, seed 11). Distances averaged over 2 noise seeds and
              // floors over 2 exact pairs. Over 10 independent draws of everything (data, exact sets,
              // latents, noise; seeds k * 100 + these) the ratio was 1.02 .. 1.24, mean 1.12, sd 0.07, so
              // 1.5x is 5 sd away from chance, while the replacement on the probability flow
              // (DPM-Solver-3M, 20 evaluations: 5.2x here) fails it by far: the check has the power to
              // see an unsound inpainter. The paper's inpainter is an approximation, and its bias shows at
              // 10,000 samples (1.41x here, more on other problems: docs/conditional.md).
              Native.ensureLoaded ()
              use scope = torch.NewDisposeScope()
              let dirs = Metric.directions 16 256 7L
              let g = new torch.Generator(11UL)
              let y = Mixture.sample problem n g
              let exact (seed: uint64) = Conditional.sampleGiven problem None known y (new torch.Generator(seed))
              use metric = new Metric.Reference(dirs, exact 12UL)
              let floor = (metric.Distance(exact 13UL) + metric.Distance(exact 14UL)) / 2.0
              let model = Model.noise (Mixture.noiseModel sde problem)
              let condition = Some(Condition.inpaint y (maskOf ()))
              let xT = latent 3UL
              let distance sampling seed =
                  let r = Sampler.sample sde model { sampling with Condition = condition } (Noise.fromSeed seed torch.CPU) xT
                  use x = r.Samples
                  metric.Distance x
              let pcDist = (distance (pc 1000) 2024L + distance (pc 1000) 2025L) / 2.0
              let flowDist = distance (dpm3m 20) 2024L
              printfn
                  "PC inpainter: %.4f, floor %.4f (%.2fx); DPM-Solver-3M with replacement: %.4f (%.2fx); noise seeds 2024, 2025"
                  pcDist
                  floor
                  (pcDist / floor)
                  flowDist
                  (flowDist / floor)
              Expect.isLessThan pcDist (1.5 * floor) (sprintf "PC inpainter %.4f against the floor %.4f" pcDist floor)
              Expect.isGreaterThan
                  flowDist
                  (2.0 * floor)
                  (sprintf "the probability flow with replacement %.4f against the floor %.4f" flowDist floor)
          }

          test
              "exact classifier guidance at scale 1 reproduces the class-conditional law (PC and DPM-Solver); without guidance the law is far" {
              Native.ensureLoaded ()
              use scope = torch.NewDisposeScope()
              let k = 3
              let dirs = Metric.directions 16 256 7L
              use metric = new Metric.Reference(dirs, Conditional.sampleComponent problem k n (new torch.Generator(14UL)))
              let floor = metric.Distance(Conditional.sampleComponent problem k n (new torch.Generator(15UL)))
              let model = Model.noise (Mixture.noiseModel sde problem)
              let guided = Guidance.classifier sde model (Conditional.classifier sde problem) (torch.tensor ([| int64 k |])) 1.0
              let xT = latent 3UL
              let distance m sampling =
                  let r = Sampler.sample sde m sampling (Noise.fromSeed 2024L torch.CPU) xT
                  use x = r.Samples
                  metric.Distance x
              let pcDist = distance guided (pc 500)
              let dpmDist = distance guided (dpm3m 50)
              let unguided = distance model (dpm3m 50)
              printfn
                  "class %d: floor %.4f; guided PC 500 steps %.4f (%.2fx), DPM-Solver-3M 50 %.4f (%.2fx); unguided %.4f (noise seed 2024)"
                  k
                  floor
                  pcDist
                  (pcDist / floor)
                  dpmDist
                  (dpmDist / floor)
                  unguided
              Expect.isLessThan pcDist (1.5 * floor) "guided PC"
              Expect.isLessThan dpmDist (1.5 * floor) "guided DPM-Solver"
              Expect.isGreaterThan unguided (5.0 * floor) "unguided samples are far from the class"
          }

          test "classifier-free guidance at w = 0 reproduces the conditional model's samples bit for bit (PC, flow, DPM-Solver)" {
              Native.ensureLoaded ()
              let f = Conditional.conditionalNoise sde problem
              let cm = { Forward = f; Output = ModelOutput.Noise; NullLabel = 5L }
              let labels = torch.tensor ([| 0L; 3L; 4L; 1L; 2L; 3L; 0L; 4L |])
              let plain = Model.noise (fun x t -> f x t labels)
              let guided = Guidance.classifierFree cm labels 0.0
              use g = new torch.Generator(5UL)
              use xT = torch.randn ([| 8L; 16L |], dtype = torch.float64, generator = g)
              for name, sampling in
                  [ "PC", pc 50
                    "flow", Sampling.flow
                    "DPM-Solver++", { Sampling.dpmSolver with Schedule = Schedule.create TimeGrid.LogSnr 15 eps } ] do
                  let a = Sampler.sample sde plain sampling (Noise.fromSeed 7L torch.CPU) xT
                  let b = Sampler.sample sde guided sampling (Noise.fromSeed 7L torch.CPU) xT
                  use xa = a.Samples
                  use xb = b.Samples
                  Expect.equal (values xa) (values xb) (sprintf "%s: identical samples (noise seed 7)" name)
                  Expect.equal b.Nfe a.Nfe (sprintf "%s: evaluations" name)
          } ]
