module ScoreSde.Tests.MemoryTests

open System
open System.IO
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp

/// Resident set size of this process in MB (Linux /proc).
let rssMb () =
    File.ReadAllLines("/proc/self/status")
    |> Array.find (fun l -> l.StartsWith "VmRSS:")
    |> fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) / 1024.0

let private live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount

/// A cheap model that allocates its output, like a real network does.
let private cheap = Model.noise (fun x _ -> x * 0.5)

/// Run a 10,000-step PC sampler and check that RSS grows by less than 50 MB from step 1000 to step
/// 10000 (a fresh x-sized tensor per step grows it by GBs at 4x3x64x64 through fragmentation).
let private rssFlatOver10000 (name: string) (seed: int64) (shape: int64[]) (predictor: Predictor) (corrector: Corrector) =
    use g = generator seed
    let noise = Noise.fromGenerator g
    use xT = Sampler.prior sde shape torch.float32 torch.CPU noise
    let rss = ResizeArray()
    let sampling =
        { pcRun predictor corrector 10000 with
            Observer =
                Some(fun i _ _ ->
                    if i % 1000 = 999 then
                        rss.Add(rssMb ())) }
    let r = Sampler.sample sde cheap sampling noise xT
    r.Samples.Dispose()
    let growth = rss.[rss.Count - 1] - rss.[0]
    printfn "RSS over 10,000 %s steps (MB, every 1000 steps): %A" name (rss |> Seq.map (fun v -> Math.Round(v, 1)) |> List.ofSeq)
    Expect.isLessThan growth 50.0 (sprintf "%s: RSS growth from step 1000 to 10000: %.1f MB" name growth)

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Memory"
        [ test "PC sampler: the live-tensor count stays flat over 3000 steps and returns to baseline" {
              let counts = ResizeArray()
              use g = generator 1L
              let noise = Noise.fromGenerator g
              use xT = Sampler.prior sde [| 4L; 3L; 8L; 8L |] torch.float32 torch.CPU noise
              let baseline = live ()
              let sampling =
                  { Sampling.pc with
                      Schedule = Schedule.uniform 3000 1e-3
                      Observer =
                          Some(fun i _ _ ->
                              if i % 500 = 499 then
                                  counts.Add(live ())) }
              let r = Sampler.sample sde cheap sampling noise xT
              Expect.allEqual counts counts.[0] (sprintf "live tensors during sampling: %A" counts)
              r.Samples.Dispose()
              Expect.equal (live ()) baseline "back to baseline after disposing the result"
          }

          test "scheduler loop with a dispose scope per step: live count flat" {
              let s = ScoreSde.CSharp.ScoreSdeVpScheduler()
              s.SetTimesteps(2000)
              use g = generator 2L
              let mutable x = torch.randn ([| 4L; 3L; 8L; 8L |], generator = g)
              let baseline = live ()
              let counts = ResizeArray()
              let step i =
                  use scope = torch.NewDisposeScope()
                  let t = s.Timesteps.[int64 i] * torch.ones (4L)
                  let out = x * 0.5
                  let o = s.StepPred(out, x, t, g)
                  x.Dispose()
                  x <- o.PrevSample.MoveToOuterDisposeScope()
              for i in 0..1999 do
                  step i
                  if i % 400 = 399 then
                      counts.Add(live ())
              Expect.allEqual counts baseline (sprintf "live tensors %A vs baseline %d" counts baseline)
              x.Dispose()
          }

          test "PC sampler: process RSS stays flat over 10,000 steps at 4x3x64x64" {
              rssFlatOver10000 "Euler-Maruyama" 3L [| 4L; 3L; 64L; 64L |] Predictor.EulerMaruyama Corrector.NoCorrector
          }

          // Two model evaluations per step: a quarter of the size keeps the test's time modest; the tensor
          // counts of the hot loop (Fast paths) show that no x-sized tensor is made per step at any size.
          test "PC sampler with the Langevin corrector: RSS flat over 10,000 steps at 4x3x32x32" {
              rssFlatOver10000
                  "reverse diffusion + Langevin"
                  4L
                  [| 4L; 3L; 32L; 32L |]
                  Predictor.ReverseDiffusion
                  (Corrector.langevin 0.16 1)
          }

          test "probability-flow sampler (RK4): RSS flat over 10,000 steps at 4x3x32x32" {
              use g = generator 5L
              use xT = torch.randn ([| 4L; 3L; 32L; 32L |], generator = g)
              let rss = ResizeArray()
              let sampling =
                  { fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 10000 1e-3 with
                      Observer =
                          Some(fun i _ _ ->
                              if i % 1000 = 999 then
                                  rss.Add(rssMb ())) }
              let r = Sampler.sample sde cheap sampling (unusedNoise ()) xT
              r.Samples.Dispose()
              let growth = rss.[rss.Count - 1] - rss.[0]
              printfn "RSS over 10,000 RK4 probability-flow steps (MB): %A" (rss |> Seq.map (fun v -> Math.Round(v, 1)) |> List.ofSeq)
              Expect.isLessThan growth 50.0 (sprintf "RSS growth from step 1000 to 10000: %.1f MB" growth)
          } ]
