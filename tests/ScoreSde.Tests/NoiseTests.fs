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

let private globalState () = values (torch.random.get_rng_state())

[<Tests>]
let tests =
    testList "Noise" [
        test "a seeded generator gives PyTorch's stream (golden: first 6 of a 384-element randn, seed 0)" {
            use doc = JsonDocument.Parse(File.ReadAllText(fixture "vp_scheduler_loop10.json"))
            let expected = doc.RootElement.GetProperty("randn_seed0_first6").EnumerateArray() |> Seq.map (fun e -> e.GetDouble()) |> Array.ofSeq
            use g = generator 0L
            use z = Noise.draw (Noise.fromGenerator g) [| 4L; 3L; 8L; 8L |] torch.float32 torch.CPU
            let v = values z
            for i in 0 .. 5 do close 1e-7 v.[i] expected.[i] (sprintf "z[%d]" i)
        }

        test "filling in place draws the same stream as torch.randn with the same generator seed" {
            for dtype in [ torch.float32; torch.float64 ] do
                use g1 = generator 7L
                use g2 = generator 7L
                use a = torch.randn([| 5L; 33L |], dtype = dtype, generator = g1)
                use b = Noise.draw (Noise.fromGenerator g2) [| 5L; 33L |] dtype torch.CPU
                Expect.isTrue (same a b) (sprintf "same draws (%A)" dtype)
        }

        test "per-sample noise does not depend on the batch size" {
            let noiseSmall = Noise.perSample 42L
            let noiseBig = Noise.perSample 42L
            use small = Noise.draw noiseSmall [| 3L; 4L; 5L |] torch.float32 torch.CPU
            use big = Noise.draw noiseBig [| 10L; 4L; 5L |] torch.float32 torch.CPU
            use head = big.narrow(0L, 0L, 3L)
            Expect.isTrue (same small head) "first 3 samples equal"
            // and the streams continue identically
            use small2 = Noise.draw noiseSmall [| 3L; 4L; 5L |] torch.float32 torch.CPU
            use big2 = Noise.draw noiseBig [| 10L; 4L; 5L |] torch.float32 torch.CPU
            use head2 = big2.narrow(0L, 0L, 3L)
            Expect.isTrue (same small2 head2) "second draws equal"
            Expect.isFalse (same small small2) "streams advance"
            use s0 = big.select(0L, 0L)
            use s1 = big.select(0L, 1L)
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
    ]
