module ScoreSde.Tests.DatasetTests

open System
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

/// Points of an [N, 2] tensor as (x, y) pairs.
let private points (t: Tensor) =
    let v = values t
    Array.init (v.Length / 2) (fun i -> v.[2 * i], v.[2 * i + 1])

let private draw dataset n seed =
    use g = generator seed
    ToyDataset.sample dataset n torch.float64 g

[<Tests>]
let tests =
    testList
        "Datasets"
        [ test "every dataset: shape, dtype, finite, seeded, global generator untouched" {
              let before = values (torch.random.get_rng_state ())
              for ds in ToyDataset.all do
                  for dtype in [ torch.float32; torch.float64 ] do
                      use g1 = generator 3L
                      use g2 = generator 3L
                      use g3 = generator 4L
                      use a = ToyDataset.sample ds 257 dtype g1
                      use b = ToyDataset.sample ds 257 dtype g2
                      use c = ToyDataset.sample ds 257 dtype g3
                      let name = ToyDataset.name ds
                      Expect.equal a.shape [| 257L; 2L |] (name + " shape")
                      Expect.equal a.dtype dtype (name + " dtype")
                      Expect.isTrue (allFinite a) (name + " finite")
                      Expect.isTrue (same a b) (name + " same seed, same points")
                      Expect.isFalse (same a c) (name + " another seed, other points")
                  Expect.equal (ToyDataset.tryParse (ToyDataset.name ds)) (Some ds) "names round-trip"
              Expect.sequenceEqual (values (torch.random.get_rng_state ())) before "global RNG state unchanged"
          }

          test "ring: every point near one of 8 centres at radius sqrt 2; unit variance" {
              let n = 20000
              use x = draw ToyDataset.Ring n 5L
              let centres = Array.init 8 (fun k -> sqrt 2.0 * cos (float k * Math.PI / 4.0), sqrt 2.0 * sin (float k * Math.PI / 4.0))
              // jitter std 0.1: a 2-D Gaussian leaves radius 0.65 with probability exp(-0.65^2 / 0.02) ~ 7e-10
              for px, py in points x do
                  let d = centres |> Array.map (fun (cx, cy) -> sqrt ((px - cx) ** 2.0 + (py - cy) ** 2.0)) |> Array.min
                  if d > 0.65 then
                      failtestf "point (%g, %g) is %g from the nearest centre (seed 5)" px py d
              // E[x^2] = 2 mean(cos^2 over 8 angles) + 0.01 = 1.01; the SE of a mean of x^2 is below 1/sqrt(n)
              let m, s = moments x
              for d in 0..1 do
                  close (5.0 / sqrt (float n)) m.[d] 0.0 (sprintf "mean dim %d (seed 5)" d)
                  close (5.0 / sqrt (float n)) (s.[d] * s.[d]) 1.01 (sprintf "variance dim %d (seed 5)" d)
          }

          test "ring: the exact log-density integrates to 1 and has the closed-form peak" {
              // Riemann sum on a 0.01 grid over [-2.5, 2.5]^2: the mixture's components have std 0.1,
              // so the grid resolves them (midpoint error below h^2 / (24 s^2) ~ 4e-4) and no mass lies outside
              let h = 0.01
              let k = int (5.0 / h)
              let coords = Array.init k (fun i -> -2.5 + (float i + 0.5) * h)
              use grid =
                  torch
                      .tensor(
                          [| for x in coords do
                                 for y in coords do
                                     yield x
                                     yield y |],
                          dtype = torch.float64
                      )
                      .reshape(-1L, 2L)
              use lp = (ToyDataset.tryLogDensity ToyDataset.Ring grid).Value
              use p = lp.exp ()
              close 1e-3 (scalar (p.sum ()) * h * h) 1.0 "total mass"
              // at a centre the other components are > 1 away (exp(-1.08^2 / 0.02) ~ 1e-25): 1 / (8 2 pi 0.01)
              use centre = torch.tensor([| sqrt 2.0; 0.0 |], dtype = torch.float64).reshape(1L, 2L)
              use lc = (ToyDataset.tryLogDensity ToyDataset.Ring centre).Value
              close 1e-12 (scalar lc) (-(log (8.0 * 2.0 * Math.PI * 0.01))) "peak"
              Expect.isNone (ToyDataset.tryLogDensity ToyDataset.Moons centre) "no closed form for moons"
          }

          test "checkerboard: every point on a dark square of [-1.5, 1.5]^2, both colours' squares equally used" {
              use x = draw ToyDataset.Checkerboard 8000 6L
              let counts = Collections.Generic.Dictionary<int * int, int>()
              for px, py in points x do
                  if abs px > 1.5 || abs py > 1.5 then
                      failtestf "point (%g, %g) outside the board" px py
                  let i, j = int (floor (px / 0.75)), int (floor (py / 0.75))
                  if (i + j) % 2 <> 0 then
                      failtestf "point (%g, %g) on a light square (%d, %d)" px py i j
                  counts.[(i, j)] <-
                      (match counts.TryGetValue((i, j)) with
                       | true, c -> c + 1
                       | _ -> 1)
              Expect.equal counts.Count 8 "8 dark squares used"
              // each square holds 1000 on average, binomial SE ~ 30
              for KeyValue(sq, c) in counts do
                  if abs (c - 1000) > 150 then
                      failtestf "square %A holds %d points, expected ~1000 (seed 6)" sq c
          }

          test "moons: every point near one of the two half circles" {
              use x = draw ToyDataset.Moons 5000 7L
              // undo the scaling and centring, then measure the distance to each arc
              let arc (cx, cy) upper (qx, qy) =
                  let dx, dy = qx - cx, qy - cy
                  let onSide = if upper then dy >= 0.0 else dy <= 0.0
                  if onSide then
                      abs (sqrt (dx * dx + dy * dy) - 1.0)
                  else
                      min (sqrt ((dx - 1.0) ** 2.0 + dy * dy)) (sqrt ((dx + 1.0) ** 2.0 + dy * dy))
              for px, py in points x do
                  let q = px / 1.2 + 0.5, py / 1.2 + 0.25
                  let d = min (arc (0.0, 0.0) true q) (arc (1.0, 0.5) false q)
                  // jitter std 0.05 per coordinate: 0.35 is 7 standard deviations
                  if d > 0.35 then
                      failtestf "point (%g, %g) is %g from both moons (seed 7)" px py d
          }

          test "swiss roll: radii within [1.5 pi, 4.5 pi] / 7 up to the jitter" {
              use x = draw ToyDataset.SwissRoll 5000 8L
              let radii = points x |> Array.map (fun (px, py) -> sqrt (px * px + py * py))
              // jitter std 0.05: allow 0.35 beyond the noiseless radius range
              Expect.isGreaterThan (Array.min radii) (1.5 * Math.PI / 7.0 - 0.35) "inner radius"
              Expect.isLessThan (Array.max radii) (4.5 * Math.PI / 7.0 + 0.35) "outer radius"
          }

          test "standardisation: fitted data have mean 0 and std 1; invert undoes apply" {
              use g = generator 9L
              use raw = torch.randn ([| 1000L; 3L |], dtype = torch.float64, generator = g)
              use data =
                  raw * torch.tensor ([| 2.0; 0.5; 10.0 |], dtype = torch.float64)
                  + torch.tensor ([| 1.0; -3.0; 7.0 |], dtype = torch.float64)
              let st = Standardisation.fit data
              use z = Standardisation.apply st data
              let m, s = moments z
              for d in 0..2 do
                  close 1e-12 m.[d] 0.0 (sprintf "mean %d" d)
                  close 1e-12 s.[d] 1.0 (sprintf "std %d" d)
              use back = Standardisation.invert st z
              Expect.isLessThan (scalar ((back - data).abs().max())) 1e-12 "round trip"
              close 1e-12 (Standardisation.logDetJacobian st) (-(st.Scale |> Array.sumBy log)) "log-det"
              Expect.throwsT<ArgumentException> (fun () -> Standardisation.apply st (torch.zeros (2L, 2L)) |> ignore) "wrong width"
          } ]
