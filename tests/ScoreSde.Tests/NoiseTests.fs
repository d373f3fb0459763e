module ScoreSde.Tests.NoiseTests

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

/// Path of a test fixture (copied next to the test binary).
let fixture (name: string) = Path.Combine(AppContext.BaseDirectory, "fixtures", name)

let private globalState () = values (torch.random.get_rng_state ())

/// Same shape and values, compared by tensor operations (no host copy of large tensors).
let private identical (a: Tensor) (b: Tensor) = a.shape = b.shape && (use d = (a - b).abs() in scalar (d.max ()) = 0.0)

[<Tests>]
let tests =
    testList
        "Noise"
        [ test "a seeded generator gives PyTorch's stream (golden: first 6 of a 384-element randn, seed 0)" {
              use doc = JsonDocument.Parse(File.ReadAllText(fixture "vp_scheduler_loop10.json"))
              let expected =
                  doc.RootElement.GetProperty("randn_seed0_first6").EnumerateArray()
                  |> Seq.map (fun e -> e.GetDouble())
                  |> Array.ofSeq
              use g = generator 0L
              use z = Noise.draw (Noise.fromGenerator g) [| 4L; 3L; 8L; 8L |] torch.float32 torch.CPU
              let v = values z
              for i in 0..5 do
                  close 1e-7 v.[i] expected.[i] (sprintf "z[%d]" i)
          }

          test "filling in place draws the same stream as torch.randn with the same generator seed" {
              for dtype in [ torch.float32; torch.float64 ] do
                  use g1 = generator 7L
                  use g2 = generator 7L
                  use a = torch.randn ([| 5L; 33L |], dtype = dtype, generator = g1)
                  use b = Noise.draw (Noise.fromGenerator g2) [| 5L; 33L |] dtype torch.CPU
                  Expect.isTrue (same a b) (sprintf "same draws (%A)" dtype)
          }

          test "per-sample noise does not depend on the batch size" {
              let noiseSmall = Noise.perSample 42L
              let noiseBig = Noise.perSample 42L
              use small = Noise.draw noiseSmall [| 3L; 4L; 5L |] torch.float32 torch.CPU
              use big = Noise.draw noiseBig [| 10L; 4L; 5L |] torch.float32 torch.CPU
              use head = big.narrow (0L, 0L, 3L)
              Expect.isTrue (same small head) "first 3 samples equal"
              // and the streams continue identically
              use small2 = Noise.draw noiseSmall [| 3L; 4L; 5L |] torch.float32 torch.CPU
              use big2 = Noise.draw noiseBig [| 10L; 4L; 5L |] torch.float32 torch.CPU
              use head2 = big2.narrow (0L, 0L, 3L)
              Expect.isTrue (same small2 head2) "second draws equal"
              Expect.isFalse (same small small2) "streams advance"
              use s0 = big.select (0L, 0L)
              use s1 = big.select (0L, 1L)
              Expect.isFalse (same s0 s1) "samples differ"
          }

          test "noise never touches torch's global generator" {
              let before = globalState ()
              use g = generator 3L
              Noise.draw (Noise.fromGenerator g) [| 100L |] torch.float32 torch.CPU |> ignore
              Noise.draw (Noise.perSample 5L) [| 4L; 10L |] torch.float64 torch.CPU |> ignore
              Noise.draw (Noise.fromSeed 5L torch.CPU) [| 4L; 10L |] torch.float64 torch.CPU |> ignore
              Expect.sequenceEqual (globalState ()) before "global RNG state unchanged"
          }

          test "draws are standard normal (moments)" {
              use g = generator 11L
              use z = Noise.draw (Noise.fromGenerator g) [| 200000L |] torch.float64 torch.CPU
              let v = values z
              let m = Array.average v
              let s = sqrt (Array.averageBy (fun x -> (x - m) * (x - m)) v)
              close (5.0 / sqrt 200000.0) m 0.0 "mean (seed 11)"
              close (5.0 / sqrt 400000.0) s 1.0 "std (seed 11)"
          }

          // The statistics are computed with tensor operations: reading millions of draws into managed
          // arrays would put large-object-heap pressure on the tests running in parallel.
          test "Noise.fast: N(0, 1) moments, tails beyond the ziggurat's base layer, and the distribution function" {
              let n = 2_000_000
              let noise = Noise.fast 12345L
              use z = Noise.draw noise [| int64 n |] torch.float64 torch.CPU
              let sn = sqrt (float n)
              let mean = scalar (z.mean ())
              let var = scalar (z.var ())
              // 5 standard errors: mean sd 1/sqrt(n); variance sd sqrt(2/n)
              close (5.0 / sn) mean 0.0 "mean (seed 12345)"
              close (5.0 * sqrt 2.0 / sn) var 1.0 "variance (seed 12345)"
              // two-sided tail probabilities erfc(c / sqrt 2); R = 3.6541528853610088 is where the tail
              // algorithm takes over, 1.0 lies in the wedge-tested layers
              use absz = z.abs ()
              for c, p in
                  [ 1.0, 0.31731050786291415
                    2.0, 0.045500263896358417
                    3.6541528853610088, 2.5807e-4
                    4.5, 6.795346e-6 ] do
                  use over = absz.gt (sc c)
                  let freq = scalar (over.sum ()) / float n
                  close (5.0 * sqrt (p * (1.0 - p) / float n) + 1e-7) freq p (sprintf "P(|z| > %g) (seed 12345)" c)
              // Kolmogorov-Smirnov distance to the normal CDF (libtorch's special.ndtr, independent of the
              // code under test); critical value at the 0.1% level: 1.95 / sqrt(n)
              let struct (sortedValues, sortedIndices) = z.sort ()
              use sorted = sortedValues
              sortedIndices.Dispose()
              use cdf = torch.special.ndtr (sorted)
              use i = torch.arange (int64 n, dtype = torch.float64)
              use below = cdf - i / float n
              use above = (i + 1.0) / float n - cdf
              let d = max (scalar (below.abs().max())) (scalar (above.abs().max()))
              Expect.isLessThan d (1.95 / sn) (sprintf "KS distance %.3g (seed 12345)" d)
          }

          test "Noise.fast: fills are independent, blocks are independent, values do not depend on the layout" {
              let noise = Noise.fast 7L
              // three blocks of 65,536 and a partial one
              let n = 3L * 65536L + 1000L
              use a = Noise.draw noise [| n |] torch.float64 torch.CPU
              use b = Noise.draw noise [| n |] torch.float64 torch.CPU
              // correlations of independent N(0, 1) pairs: sd 1 / sqrt(m)
              let corr (x: Tensor) (y: Tensor) = scalar ((x * y).mean())
              close (5.0 / sqrt (float n)) (corr a b) 0.0 "consecutive fills uncorrelated (seed 7)"
              let block k = a.narrow (0L, int64 k * 65536L, 65536L)
              close (5.0 / 256.0) (corr (block 0) (block 1)) 0.0 "block 0 vs block 1 uncorrelated (seed 7)"
              close (5.0 / 256.0) (corr (block 1) (block 2)) 0.0 "block 1 vs block 2 uncorrelated (seed 7)"
              Expect.isFalse (identical a b) "a second fill differs"
              // the same seed reproduces; a strided target and float32 get the same logical values
              use again = Noise.draw (Noise.fast 7L) [| n |] torch.float64 torch.CPU
              Expect.isTrue (identical a again) "same seed, same first fill"
              use c = Noise.draw (Noise.fast 9L) [| 6L; 50L |] torch.float64 torch.CPU
              use strided = torch.empty([| 50L; 6L |], dtype = torch.float64).t()
              (Noise.fast 9L).Fill strided
              Expect.isTrue (same c strided) "a non-contiguous target gets the contiguous fill's logical values"
              use f32 = Noise.draw (Noise.fast 9L) [| 6L; 50L |] torch.float32 torch.CPU
              let v32, v64 = values f32, values c
              for i in 0 .. v32.Length - 1 do
                  close 1e-6 v32.[i] v64.[i] (sprintf "float32 element %d" i)
          } ]

/// Changes torch's global thread count: sequenced.
[<Tests>]
let threadTests =
    testSequenced
    <| testList
        "Noise (threads)"
        [ test "Noise.fast: the same values with 1 and 2 torch threads (blocks are filled in parallel)" {
              let before = torch.get_num_threads ()
              try
                  let draw threads =
                      torch.set_num_threads threads
                      Noise.draw (Noise.fast 3L) [| 5L * 65536L + 17L |] torch.float32 torch.CPU
                  use one = draw 1
                  use two = draw 2
                  Expect.isTrue (identical one two) "same values whatever the thread count (seed 3)"
              finally
                  torch.set_num_threads before
          } ]
