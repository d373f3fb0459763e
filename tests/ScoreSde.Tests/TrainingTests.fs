module ScoreSde.Tests.TrainingTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp

/// A 2-D Gaussian for which the optimal noise predictor is known in closed form.
let private gauss2 = { Mu = [| 1.0; -0.5 |]; S = [| 0.5; 0.25 |] }

let private smallConfig = { ScoreNet.defaultConfig 2 with Hidden = 32; Layers = 2; Embedding = 8 }

[<Tests>]
let tests =
    testList
        "Training"
        [ test "the loss of the exact noise predictor is the closed-form residual variance (every SDE)" {
              // For Gaussian data, x_t = a x0 + sigma z with x0 ~ N(mu, s^2): the best predictor
              // E[z | x_t] leaves Var(z | x_t) = a^2 s^2 / (a^2 s^2 + sigma^2) per coordinate. With
              // likelihood weighting the loss is multiplied by g(t)^2 / sigma^2.
              let n = 200000L
              for name, sde in allSdes do
                  for t in [ 0.05; 0.3; 0.9 ] do
                      use g = generator 31L
                      use z0 = torch.randn ([| n; 2L |], dtype = torch.float64, generator = g)
                      use x0 =
                          z0 * torch.tensor (gauss2.S, dtype = torch.float64)
                          + torch.tensor (gauss2.Mu, dtype = torch.float64)
                      use z = torch.randn ([| n; 2L |], dtype = torch.float64, generator = g)
                      use tt = torch.full ([| n |], sc t, dtype = torch.float64)
                      let a, sigma = marginalCoefficients sde t
                      let v = sigma * sigma
                      let r = Array.init 2 (fun d -> let s2 = gauss2.S.[d] ** 2.0 in a * a * s2 / (a * a * s2 + v))
                      let residual = Array.average r
                      // (eps* - z)_d ~ N(0, r_d), so the per-sample loss (the mean of the two squares) has
                      // variance (2 r_0^2 + 2 r_1^2) / 4: allow 5 standard errors of the mean over n samples
                      let se = sqrt ((2.0 * r.[0] ** 2.0 + 2.0 * r.[1] ** 2.0) / 4.0) / sqrt (float n)
                      let model = gaussianNoiseModel sde gauss2
                      use l = Training.loss sde LossWeighting.Noise model x0 tt z
                      close (5.0 * se) (scalar l) residual (sprintf "%s noise loss at t = %g (seed 31)" name t)
                      use lw = Training.loss sde LossWeighting.Likelihood model x0 tt z
                      // g(t)^2 by hand: VP beta, sub-VP beta (1 - alpha^4), VE 2 log(sigma_max / sigma_min) sigma^2
                      let g2 =
                          match sde with
                          | Sde.Vp _ -> betaOf sde t
                          | Sde.SubVp _ -> betaOf sde t * (1.0 - a ** 4.0)
                          | Sde.Ve _ -> 2.0 * log 5000.0 * v
                      let w = g2 / v
                      close (5.0 * w * se) (scalar lw) (w * residual) (sprintf "%s likelihood-weighted loss at t = %g (seed 31)" name t)
          }

          test "the network is initialised from the caller's generator only" {
              let before = values (torch.random.get_rng_state ())
              use g1 = generator 40L
              use g2 = generator 40L
              use g3 = generator 41L
              use a = new ScoreNet(smallConfig, g1)
              use b = new ScoreNet(smallConfig, g2)
              use c = new ScoreNet(smallConfig, g3)
              let ps (n: ScoreNet) = n.parameters () |> Seq.collect (fun p -> values p) |> Seq.toArray
              Expect.sequenceEqual (ps a) (ps b) "same seed, same weights"
              Expect.notEqual (ps a) (ps c) "another seed, other weights"
              // uniform in +-1/sqrt(fan_in): the first layer's fan-in is 2 + 8
              let w0 = values (a.parameters () |> Seq.head)
              Expect.isTrue (w0 |> Array.forall (fun w -> abs w <= 1.0 / sqrt 10.0)) "init bound"
              Expect.sequenceEqual (values (torch.random.get_rng_state ())) before "global RNG state unchanged"
              Expect.equal a.ParameterCount ((10L * 32L + 32L) + (32L * 32L + 32L) + (32L * 2L + 2L)) "parameter count"
          }

          test "the network maps [B, D] and one time per row (or one for all) to [B, D]" {
              use g = generator 42L
              use net = new ScoreNet(smallConfig, g)
              use x = torch.randn ([| 5L; 2L |], generator = g)
              use t = torch.rand ([| 5L |], generator = g)
              use _ng = torch.no_grad ()
              use out = net.forward (x, t)
              Expect.equal out.shape [| 5L; 2L |] "shape"
              use t0 = torch.tensor (0.3f)
              use shared = net.forward (x, t0)
              use full = net.forward (x, torch.full ([| 5L |], sc 0.3))
              Expect.isTrue (same shared full) "a 0-d time applies to every row"
              use x64 = x.to_type (torch.float64)
              Expect.equal (net.forward(x64, t).dtype) torch.float64 "output in the input's dtype"
              Expect.throwsT<ArgumentException> (fun () -> net.forward (torch.zeros (5L, 3L), t) |> ignore) "wrong width"
              Expect.throwsT<ArgumentException> (fun () -> net.forward (x, torch.zeros (3L)) |> ignore) "wrong time count"
          }

          test "training is reproducible from the seed and leaves the global generator alone" {
              let before = values (torch.random.get_rng_state ())
              use data = (let g = generator 50L in ToyDataset.sample ToyDataset.Moons 1000 torch.float32 g)
              let once () =
                  use g = generator 51L
                  use net = new ScoreNet(smallConfig, g)
                  let r = Training.train sde { Training.defaults with Steps = 40; BatchSize = 64 } net data g
                  use ema = r.Ema
                  r.Losses, (ema.parameters () |> Seq.collect (fun p -> values p) |> Seq.toArray)
              let l1, w1 = once ()
              let l2, w2 = once ()
              Expect.sequenceEqual l1 l2 "same losses"
              Expect.sequenceEqual w1 w2 "same EMA weights"
              Expect.sequenceEqual (values (torch.random.get_rng_state ())) before "global RNG state unchanged"
          }

          test "Adam's first step is -lr g / (|g| + 1e-8), g the gradient of the first batch's loss" {
              // After bias correction Adam's first update is -lr m1 / (sqrt(v1) + eps) with m1 = g and
              // v1 = g^2. The gradient is recomputed here from the same draws in the documented order
              // (batch indices, then uniform times, then noise, all from the generator).
              use data = (let g = generator 54L in ToyDataset.sample ToyDataset.Ring 500 torch.float32 g)
              let lr = 1e-3
              let settings =
                  { Training.defaults with
                      Steps = 1
                      BatchSize = 64
                      LearningRate = lr
                      WarmupSteps = 0
                      CosineDecay = false
                      GradClip = None }
              use g = generator 55L
              use net = new ScoreNet(smallConfig, g)
              let before = net.parameters () |> Seq.map (fun p -> values p) |> Seq.toArray
              let r = Training.train sde settings net data g
              r.Ema.Dispose()
              let after = net.parameters () |> Seq.map (fun p -> values p) |> Seq.toArray
              // the same initial network and draws, and the loss's gradient by autograd
              use g2 = generator 55L
              use twin = new ScoreNet(smallConfig, g2)
              use idx = torch.randint (0L, 500L, [| 64L |], dtype = torch.int64, generator = g2)
              use u = torch.rand ([| 64L |], dtype = torch.float64, generator = g2)
              use t = (u * (1.0 - settings.Eps) + settings.Eps).to_type(torch.float32)
              use z = torch.empty ([| 64L; 2L |])
              z.normal_ (0.0, 1.0, g2) |> ignore
              use x0 = data.index_select (0L, idx)
              use l = Training.loss sde LossWeighting.Noise (fun x tt -> twin.forward (x, tt)) x0 t z
              l.backward ()
              let grads = twin.parameters () |> Seq.map (fun p -> values p.grad) |> Seq.toArray
              for k in 0 .. grads.Length - 1 do
                  for i in 0 .. grads.[k].Length - 1 do
                      let gi = grads.[k].[i]
                      let expected = before.[k].[i] - lr * gi / (abs gi + 1e-8)
                      // float32 parameters below 1 in size: rounding of the update ~1e-7
                      close 2e-7 after.[k].[i] expected (sprintf "parameter %d of tensor %d (seed 55)" i k)
          }

          test "with EMA decay 0 the averaged weights are the trained weights" {
              use data = (let g = generator 52L in ToyDataset.sample ToyDataset.Ring 500 torch.float32 g)
              use g = generator 53L
              use net = new ScoreNet(smallConfig, g)
              let r = Training.train sde { Training.defaults with Steps = 10; BatchSize = 32; EmaDecay = 0.0 } net data g
              use ema = r.Ema
              for p, e in Seq.zip (net.parameters ()) (ema.parameters ()) do
                  Expect.isTrue (same p e) "EMA = weights"
          }

          test "training reduces the loss, and samples of the trained model beat prior noise" {
              // ring data; seeds 60 (data), 61 (held out), 62 (network, training), 63 (sampling)
              use data = (let g = generator 60L in ToyDataset.sample ToyDataset.Ring 10000 torch.float32 g)
              use held = (let g = generator 61L in ToyDataset.sample ToyDataset.Ring 2000 torch.float32 g)
              use g = generator 62L
              use net = new ScoreNet(ScoreNet.defaultConfig 2, g)
              let r = Training.train sde { Training.defaults with Steps = 1500; BatchSize = 256; LearningRate = 1e-2 } net data g
              use ema = r.Ema
              // an untrained network predicts ~0, so the first losses are ~E|z|^2 / D = 1; a trained one
              // explains a large part of the noise (the optimum for this data is ~0.2 averaged over t)
              let first = Array.average r.Losses.[..19]
              let last = Array.average r.Losses.[r.Losses.Length - 200 ..]
              Expect.isLessThan last (0.6 * first) (sprintf "loss fell from %.3f to %.3f (seed 62)" first last)
              use gs = generator 63L
              use xT = torch.randn ([| 2000L; 2L |], generator = gs)
              let s = Sampler.sample sde (ScoreNet.toModel ema) (fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 25 1e-3) (unusedNoise ()) xT
              use samples = s.Samples
              let trained = Metrics.slicedWasserstein1 samples held
              let prior = Metrics.slicedWasserstein1 xT held
              // the prior sits at ~0.25 from this data, two samples of the data itself at ~0.02
              Expect.isLessThan trained (0.5 * prior) (sprintf "sliced W1: trained %.4f, prior %.4f (seeds 60-63)" trained prior)
          }

          test "bad training settings are rejected with the field named" {
              use g = generator 1L
              use net = new ScoreNet(smallConfig, g)
              use data = torch.zeros (10L, 2L)
              let expectArg name settings =
                  try
                      Training.train sde settings net data g |> ignore
                      failtestf "expected an ArgumentException for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name (sprintf "parameter %s" name)
              expectArg "Steps" { Training.defaults with Steps = 0 }
              expectArg "BatchSize" { Training.defaults with BatchSize = -1 }
              expectArg "LearningRate" { Training.defaults with LearningRate = 0.0 }
              expectArg "Eps" { Training.defaults with Eps = 1.0 }
              expectArg "EmaDecay" { Training.defaults with EmaDecay = 1.0 }
              Expect.throwsT<ArgumentException>
                  (fun () -> Training.train sde Training.defaults net (torch.zeros (10L, 3L)) g |> ignore)
                  "data width"
          } ]
