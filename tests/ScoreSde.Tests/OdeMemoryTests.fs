module ScoreSde.Tests.OdeMemoryTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp

/// A cheap model that allocates its output, like a real network does (differentiable in x).
let private cheap = Model.noise (fun x _ -> x * 0.5)

[<Tests>]
let memory =
    testSequenced
    <| testList
        "Memory: adaptive ODE solver and likelihood"
        [ test "Dopri5: live tensors and RSS stay flat over 400 steps at 4x3x64x64" {
              use g = generator 7L
              use x = torch.randn ([| 4L; 3L; 64L; 64L |], generator = g)
              let live = ResizeArray<int64>()
              let rss = ResizeArray<float>()
              let settings =
                  { AdaptiveOde.defaults with
                      MaxStep = Some 2.5e-3
                      Observer =
                          Some(fun i _ _ ->
                              if i % 50 = 49 then
                                  live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount)
                                  rss.Add(MemoryTests.rssMb ())) }
              let r = AdaptiveOde.integrate settings (ProbabilityFlow.field sde cheap) x 1.0 1e-3
              r.State.Dispose()
              Expect.isGreaterThanOrEqual r.Steps 399 "at least 400 steps"
              Expect.allEqual live live.[0] (sprintf "live tensors during the solve: %A" live)
              let growth = rss.[rss.Count - 1] - rss.[0]
              printfn "Dopri5 RSS over %d steps (MB, every 50): %A" r.Steps (rss |> Seq.map (fun v -> Math.Round(v, 1)) |> List.ofSeq)
              Expect.isLessThan growth 50.0 (sprintf "RSS growth from step 50 to %d: %.1f MB" r.Steps growth)
          }

          test "likelihood: RSS stays flat over 1000 steps with autograd in every evaluation" {
              use g = generator 8L
              use x = torch.randn ([| 4L; 3L; 16L; 16L |], generator = g)
              let rss = ResizeArray<float>()
              let adaptive =
                  { AdaptiveOde.defaults with
                      MaxStep = Some 1e-3
                      Observer =
                          Some(fun i _ _ ->
                              if i % 100 = 99 then
                                  rss.Add(MemoryTests.rssMb ())) }
              let settings =
                  { Likelihood.defaults with
                      Method = OdeMethod.Dopri5 adaptive
                      Schedule = Schedule.uniform 1 1e-3
                      Divergence = Divergence.Hutchinson(Probe.Rademacher, 1) }
              use r = Likelihood.compute sde cheap settings (Noise.fromGenerator g) x
              let growth = rss.[rss.Count - 1] - rss.[0]
              printfn "likelihood RSS (MB, every 100 steps): %A" (rss |> Seq.map (fun v -> Math.Round(v, 1)) |> List.ofSeq)
              Expect.isLessThan growth 50.0 (sprintf "RSS growth: %.1f MB" growth)
          } ]
