module ScoreSde.Tests.FrechetTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private t64 (v: float[]) = torch.tensor (v, dtype = torch.float64)

let private matrix (rows: float[][]) =
    torch.tensor(Array.concat rows, dtype = torch.float64).reshape([| int64 rows.Length; int64 rows.Length |])

/// A random symmetric positive-definite 2 x 2 matrix: rotation R(theta) diag(a, b) R(theta)^T.
let private spd2 (a: float) (b: float) (theta: float) =
    let c, s = Math.Cos theta, Math.Sin theta
    [| [| a * c * c + b * s * s; (a - b) * c * s |]; [| (a - b) * c * s; a * s * s + b * c * c |] |]

/// Samples [n, d] of N(mean, L L^T) for a lower-triangular L given by rows.
let private gaussianSamples (g: torch.Generator) (n: int64) (mean: float[]) (l: float[][]) =
    use z = torch.randn ([| n; int64 mean.Length |], dtype = torch.float64, generator = g)
    use lt = (matrix l).t()
    use m = t64 mean
    use zl = z.matmul lt
    zl.add m

[<Tests>]
let tests =
    testList
        "Frechet distance"
        [ test "diagonal covariances: |m1 - m2|^2 + sum (sqrt a - sqrt b)^2" {
              let m1, m2 = [| 0.5; -1.0; 2.0 |], [| 0.0; 1.0; 2.5 |]
              let a, b = [| 1.0; 4.0; 0.25 |], [| 9.0; 1.0; 0.25 |]
              use c1 = torch.diag (t64 a)
              use c2 = torch.diag (t64 b)
              let expected =
                  Array.fold2 (fun acc x y -> acc + (x - y) ** 2.0) 0.0 m1 m2
                  + Array.fold2 (fun acc x y -> acc + (sqrt x - sqrt y) ** 2.0) 0.0 a b
              close 1e-12 (Frechet.ofMoments (t64 m1) c1 (t64 m2) c2) expected "closed form"
          }

          testPropertyWithConfig
              propConfig
              "2 x 2 covariances that do not commute: tr sqrt(S1^1/2 S2 S1^1/2) = sqrt(tr S1 S2 + 2 sqrt(det S1 det S2))"
              (fun (NormalFloat u) (NormalFloat v) ->
                  // eigenvalues in [0.05, 5], angles anywhere: S1 = R(t1) diag(a1, b1) R(t1)^T and so on
                  let u, v = max -50.0 (min 50.0 u), max -50.0 (min 50.0 v)
                  let squash (x: float) = 0.05 + 4.95 / (1.0 + exp (-x))
                  let a1, b1, a2, b2 = squash u, squash v, squash (u * v), squash (u - v)
                  let s1 = spd2 a1 b1 (u * 3.0)
                  let s2 = spd2 a2 b2 (v * 5.0)
                  use c1 = matrix s1
                  use c2 = matrix s2
                  // for 2 x 2 PSD M: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), with M similar to S1 S2
                  let tr12 =
                      s1.[0].[0] * s2.[0].[0]
                      + s1.[0].[1] * s2.[1].[0]
                      + s1.[1].[0] * s2.[0].[1]
                      + s1.[1].[1] * s2.[1].[1]
                  let expected = sqrt (tr12 + 2.0 * sqrt (a1 * b1 * a2 * b2))
                  close 1e-10 (Frechet.traceSqrtProduct c1 c2) expected (sprintf "u = %g, v = %g" u v)
                  use zero = torch.zeros ([| 2L |], dtype = torch.float64)
                  let d = Frechet.ofMoments zero c1 zero c2
                  close 1e-10 d (a1 + b1 + a2 + b2 - 2.0 * expected) "distance"
                  close 1e-10 (Frechet.ofMoments zero c2 zero c1) d "symmetric")

          test "scaled covariance in 5 dimensions: (1 - c)^2 tr S" {
              use g = generator 40L
              use a = torch.randn ([| 5L; 5L |], dtype = torch.float64, generator = g)
              use s = a.matmul (a.t ())
              use s4 = s.mul (sc 4.0)
              use m = torch.zeros ([| 5L |], dtype = torch.float64)
              let tr = s.trace().item<float>()
              close (1e-10 * tr) (Frechet.ofMoments m s m s4) tr "(1 - 2)^2 tr S (seed 40)"
          }

          test "from samples: a set against itself is 0, the distance is symmetric and near the Gaussians' (seed 41)" {
              use g = generator 41L
              let n = 40000L
              let l1 = [| [| 1.0; 0.0; 0.0 |]; [| 0.5; 0.8; 0.0 |]; [| -0.3; 0.2; 0.6 |] |]
              let l2 = [| [| 0.7; 0.0; 0.0 |]; [| -0.4; 1.1; 0.0 |]; [| 0.1; 0.3; 0.9 |] |]
              let m1, m2 = [| 0.0; 0.5; -0.2 |], [| 0.3; 0.5; 0.1 |]
              use x = gaussianSamples g n m1 l1
              use y = gaussianSamples g n m2 l2
              let self = Frechet.ofFeatures x x
              close 1e-9 self 0.0 "set against itself"
              let dxy, dyx = Frechet.ofFeatures x y, Frechet.ofFeatures y x
              close (1e-10 * dxy) dyx dxy "symmetry"
              use c1 = (matrix l1).matmul((matrix l1).t())
              use c2 = (matrix l2).matmul((matrix l2).t())
              let exact = Frechet.ofMoments (t64 m1) c1 (t64 m2) c2
              // the estimate's error is O(d / sqrt n) relative to the traces (about 3 here): 0.02 is
              // several standard errors at n = 40,000 and far below the distance (about 0.35)
              close 0.02 dxy exact "estimate vs exact"
              use st = Frechet.statistics x
              Expect.equal st.Count n "count"
              Expect.equal st.Covariance.dtype torch.float64 "float64 statistics"
              use x32 = x.to_type torch.float32
              close 1e-4 (Frechet.ofFeatures x32 y) dxy "float32 features, float64 arithmetic"
          }

          test "bad inputs are rejected naming the parameter" {
              let expectArg what param (f: unit -> 'a) =
                  try
                      f () |> ignore
                      failtestf "%s: expected an ArgumentException" what
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName param what
              expectArg "one vector" "features" (fun () -> Frechet.statistics (torch.zeros ([| 1L; 3L |])))
              expectArg "1-D" "features" (fun () -> Frechet.statistics (torch.zeros ([| 5L |])))
              expectArg "widths" "b" (fun () -> Frechet.ofFeatures (torch.randn ([| 4L; 3L |])) (torch.randn ([| 4L; 2L |])))
              expectArg "NaN" "features" (fun () -> Frechet.statistics (torch.full ([| 3L; 2L |], sc nan)))
          } ]
