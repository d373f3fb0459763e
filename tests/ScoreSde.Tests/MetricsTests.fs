module ScoreSde.Tests.MetricsTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

[<Tests>]
let tests =
    testList
        "Metrics"
        [ test "1-D Wasserstein-1 matches hand-computed values" {
              // equal sizes: sorted pairs (0,1) (1,2) (5,3): (1 + 1 + 2) / 3
              close 1e-15 (Metrics.wasserstein1D [| 5.0; 0.0; 1.0 |] [| 2.0; 3.0; 1.0 |]) (4.0 / 3.0) "equal sizes"
              // a point against a two-point cloud: |0 - 0.5| / 2 + |1 - 0.5| / 2
              close 1e-15 (Metrics.wasserstein1D [| 0.0; 1.0 |] [| 0.5 |]) 0.5 "sizes 2 and 1"
              // sizes 3 and 2: quantiles 0,1,2 on thirds against 0,2 on halves; they differ by 1 on
              // (1/3, 1/2] and on (1/2, 2/3]: 1/6 + 1/6
              close 1e-15 (Metrics.wasserstein1D [| 2.0; 0.0; 1.0 |] [| 2.0; 0.0 |]) (1.0 / 3.0) "sizes 3 and 2"
              // a shift by c costs exactly c, whatever the sizes
              let a = Array.init 7 (fun i -> float (i * i))
              close 1e-12 (Metrics.wasserstein1D a (a |> Array.map (fun v -> v + 2.5))) 2.5 "shift"
              close 0.0 (Metrics.wasserstein1D a a) 0.0 "identical"
          }

          test "directions are unit vectors fixed by the seed" {
              use d1 = Metrics.directions 3 16 5L
              use d2 = Metrics.directions 3 16 5L
              use d3 = Metrics.directions 3 16 6L
              Expect.equal d1.shape [| 3L; 16L |] "shape [dim, count]"
              Expect.isTrue (same d1 d2) "same seed, same directions"
              Expect.isFalse (same d1 d3) "another seed, other directions"
              use norms = torch.linalg.vector_norm (d1, 2.0, [| 0L |], false)
              for n in values norms do
                  close 1e-12 n 1.0 "unit norm"
          }

          test "sliced W1 of a translated cloud is the mean projected shift" {
              // y = x + c exactly: every projection is shifted by c . theta, so the sliced distance is
              // mean_k |c . theta_k| up to float32 rounding of the points
              use g = generator 11L
              use x = torch.randn ([| 500L; 2L |], generator = g)
              let c = [| 1.5; -0.5 |]
              use shift = torch.tensor(c, dtype = torch.float32).reshape(1L, 2L)
              use y = x + shift
              use dirs = Metrics.directions 2 128 0L
              let dv = values dirs // [2, 128] row-major
              let expected = Array.init 128 (fun k -> abs (c.[0] * dv.[k] + c.[1] * dv.[128 + k])) |> Array.average
              close 1e-5 (Metrics.slicedWasserstein1 x y) expected "sliced W1 (seed 11)"
          }

          test "sliced W1 rejects mismatched or non-finite clouds" {
              use a = torch.zeros (4L, 2L)
              use b = torch.zeros (4L, 3L)
              use c = torch.tensor([| 0.0; nan |]).reshape(1L, 2L)
              Expect.throwsT<ArgumentException> (fun () -> Metrics.slicedWasserstein1 a b |> ignore) "dimensions differ"
              Expect.throwsT<ArgumentException> (fun () -> Metrics.slicedWasserstein1 a c |> ignore) "NaN"
              Expect.throwsT<ArgumentException> (fun () -> Metrics.wasserstein1D [||] [| 1.0 |] |> ignore) "empty"
          } ]
