/// ScoreSdeVeScheduler's API: its tables and steps against the formulas written out in float64, the
/// config file, bad inputs, and what it does with the caller's tensors and generators.
module ScoreSde.Tests.VeSchedulerApiTests

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Tests.Common

/// sigma_k of n discrete sigmas: sigma_min (sigma_max / sigma_min)^(k / (n - 1)), float64.
let private discrete (lo: float) (hi: float) (n: int) (k: int) = lo * (hi / lo) ** (float k / float (n - 1))

/// Tensors alive on this thread, and tensors created so far.
let private live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount

let private created () =
    let s = DisposeScopeManager.Statistics
    s.CreatedInScopeCount + s.CreatedOutsideScopeCount

/// The call throws an ArgumentException naming the parameter and showing the value, and leaves no
/// tensor alive behind it.
let private expectArg (name: string) (value: string) (f: unit -> obj) =
    let before = live ()
    try
        f () |> ignore
        failtestf "expected an ArgumentException for %s" name
    with :? ArgumentException as e ->
        Expect.equal e.ParamName name (sprintf "parameter name for %s (%s)" name e.Message)
        Expect.stringContains e.Message value (sprintf "message shows the value for %s" name)
    Expect.equal (live ()) before (sprintf "no tensor left alive by the failed call (%s)" name)

[<Tests>]
let tests =
    testList
        "ScoreSdeVeScheduler (API)"
        [ test "properties; the constructor's tables; SetTimesteps and SetSigmas as in diffusers" {
              let s = ScoreSdeVeScheduler()
              Expect.equal s.Config (VeSchedulerConfig(2000, 0.15, 0.01, 1348.0, 1e-5, 1)) "config"
              Expect.equal s.InitNoiseSigma 1348.0 "init noise sigma = sigma_max"
              Expect.equal s.Order 1 "order"
              Expect.equal s.Length 2000 "length"
              // the constructor sets 2000 timesteps too: steps work before SetTimesteps, as in diffusers
              Expect.equal (s.Timesteps.numel ()) 2000L "2000 timesteps"
              let old = s.Timesteps
              s.SetTimesteps(10)
              Expect.isFalse old.IsInvalid "the replaced timesteps are not disposed (the caller may hold them)"
              let ts = values s.Timesteps
              Expect.equal s.Timesteps.dtype torch.float32 "float32 timesteps"
              Expect.equal ts.Length 10 "10 timesteps"
              for i in 0..9 do
                  close 1.2e-7 ts.[i] (1.0 - float i * (1.0 - 1e-5) / 9.0) (sprintf "timestep %d" i)
              Expect.equal (s.Sigmas.numel ()) 2000L "set_timesteps keeps the sigmas"
              Expect.equal (s.DiscreteSigmas.numel ()) 2000L "and the discrete sigmas"
              s.SetSigmas(10)
              Expect.equal (s.Sigmas.numel ()) 10L "sigmas over the 10 timesteps"
              let sg, d = values s.Sigmas, values s.DiscreteSigmas
              Expect.equal d.Length 10 "10 discrete sigmas"
              for i in 0..9 do
                  // float32 tables: a few ulps (a sigma also carries its timestep's ulp times ln(r) = 11.8)
                  closeRel 2e-6 sg.[i] (0.01 * 134800.0 ** ts.[i]) (sprintf "sigma %d" i)
                  closeRel 1e-6 d.[i] (discrete 0.01 1348.0 10 i) (sprintf "discrete sigma %d" i)
              s.SetTimesteps(4, samplingEps = 0.5)
              close 1e-7 (values s.Timesteps).[3] 0.5 "samplingEps override"
              s.SetSigmas(3, sigmaMin = 2.0, sigmaMax = 8.0)
              Expect.equal (values s.Sigmas).Length 4 "sigmas follow the current timesteps"
              closeRel 1e-6 (values s.DiscreteSigmas).[1] 4.0 "overridden bounds"
              closeRel 1e-6 (values s.Sigmas).[3] (2.0 * 4.0 ** 0.5) "sigma at t = 0.5"
              use x = torch.ones (2L, 3L)
              Expect.isTrue (obj.ReferenceEquals(s.ScaleModelInput(x), x)) "identity input scaling"
          }

          test "StepPred by hand in float64: index long(t (len - 1)), g^2 = sigma_k^2 - sigma_{k-1}^2, score as given" {
              let s = ScoreSdeVeScheduler(sigmaMax = 50.0)
              s.SetTimesteps(10)
              s.SetSigmas(10)
              let n = 10
              for times, dtype in [ [| 0.95; 0.5; 0.0 |], torch.float64; [| 0.5 |], torch.float32; [| 0.34 |], torch.float64 ] do
                  use g0 = generator 9L
                  use x = torch.randn ([| 3L; 2L; 2L |], dtype = torch.float64, generator = g0)
                  use out = torch.randn ([| 3L; 2L; 2L |], dtype = torch.float64, generator = g0)
                  use t =
                      if times.Length = 1 then
                          torch.tensor (times.[0], dtype = dtype)
                      else
                          torch.tensor (times, dtype = dtype)
                  use g = generator 10L
                  let r = s.StepPred(out, t, x, g)
                  use prev = r.PrevSample
                  use mean = r.PrevSampleMean
                  use g2 = generator 10L
                  use z = torch.randn ([| 3L; 2L; 2L |], dtype = torch.float64, generator = g2)
                  let xs, os, zs, ms, ps = values x, values out, values z, values mean, values prev
                  for i in 0 .. xs.Length - 1 do
                      let tv = if times.Length = 1 then times.[0] else times.[i / 4]
                      let k = int (floor (tv * float (n - 1)))
                      let below = if k = 0 then 0.0 else discrete 0.01 50.0 n (k - 1)
                      let sigma2 = discrete 0.01 50.0 n k ** 2.0
                      let g2 = sigma2 - below ** 2.0
                      let m = xs.[i] + g2 * os.[i]
                      // float32 discrete sigmas and squares: g^2 within a few float32 ulps of sigma_k^2
                      let dg2 = 1e-6 * sigma2
                      let what = sprintf "t %A element %d (seeds 9, 10)" times i
                      close (1e-6 * abs m + dg2 * abs os.[i]) ms.[i] m (what + " mean")
                      let tol = 1e-6 * abs m + dg2 * (abs os.[i] + abs zs.[i] / sqrt g2)
                      close tol ps.[i] (m + sqrt g2 * zs.[i]) (what + " sample")
              // before any SetTimesteps: the constructor's 2000 timesteps and discrete sigmas (diffusers)
              let d = ScoreSdeVeScheduler()
              use x = torch.ones ([| 1L; 4L |], dtype = torch.float64)
              use t = torch.tensor (0.5f)
              let r = d.StepPred(x, t, x, generator 1L)
              // index long(0.5 * 1999) = 999
              let sigma2 = discrete 0.01 1348.0 2000 999 ** 2.0
              let g2 = sigma2 - discrete 0.01 1348.0 2000 998 ** 2.0
              close (1e-6 * sigma2) (values r.PrevSampleMean).[0] (1.0 + g2) "mean with index 999 of 2000"
          }

          testPropertyWithConfig
              { propConfig with maxTest = 40 }
              "StepPred's g^2 over every index telescopes to sigma_max^2 (any n, sigmas, float32 or float64 times)"
          <| fun (Seed seed) (wide: bool) ->
              // n in 1..300, sigma_min log-uniform in [1e-4, 1], sigma_max / sigma_min in [10^0.1, 10^6]
              let rng = Random(int seed)
              let n = rng.Next(1, 301)
              let lo = 10.0 ** (-4.0 * rng.NextDouble())
              let hi = lo * 10.0 ** (0.1 + 5.9 * rng.NextDouble())
              let s = ScoreSdeVeScheduler(n, sigmaMin = lo, sigmaMax = hi)
              // a time inside each index's interval: (k + 0.5) / (n - 1), and 1 for the last
              let times = Array.init n (fun k -> if k = n - 1 then 1.0 else (float k + 0.5) / float (n - 1))
              use t = torch.tensor (times, dtype = (if wide then torch.float64 else torch.float32))
              use zeros = torch.zeros ([| int64 n; 1L |])
              use ones = torch.ones ([| int64 n; 1L |])
              let r = s.StepPred(ones, t, zeros, generator 1L)
              use mean = r.PrevSampleMean
              r.PrevSample.Dispose()
              // mean = 0 + g_k^2 * 1: each positive, and their sum sigma_{n-1}^2 up to float32 rounding of
              // each square (sigma^2 is formed in float32 in diffusers, whatever the time's dtype)
              let g2 = values mean
              let d = values s.DiscreteSigmas
              let ulp = 1.0 / 8388608.0
              let tol = 4.0 * ulp * (Array.sumBy (fun x -> x * x) d + hi * hi)
              Expect.isTrue (g2 |> Array.forall (fun x -> x > 0.0)) (sprintf "g^2 > 0 (n %d, sigmas %g..%g, seed %d)" n lo hi seed)
              close tol (Array.sum g2) (d.[n - 1] ** 2.0) (sprintf "sum of g^2 (n %d, sigmas %g..%g, wide %b, seed %d)" n lo hi wide seed)
              // (one discrete sigma is linspace's start: sigma_min)
              let last = if n = 1 then lo else hi
              closeRel ((abs (log last) + 2.0) * ulp) d.[n - 1] last (sprintf "the last discrete sigma (seed %d)" seed)

          test "StepCorrect by hand: float32 noise first, batch-averaged norms, e rounded to float32" {
              let s = ScoreSdeVeScheduler(snr = 0.2)
              for dtype in [ torch.float32; torch.float64 ] do
                  use g0 = generator 12L
                  use x = torch.randn ([| 4L; 6L |], dtype = dtype, generator = g0)
                  use out = torch.randn ([| 4L; 6L |], dtype = dtype, generator = g0) * 0.3
                  use g = generator 13L
                  let r = s.StepCorrect(out, x, g)
                  use prev = r.PrevSample
                  use mean = r.PrevSampleMean
                  Expect.equal prev.dtype dtype "the sample's dtype"
                  use g2 = generator 13L
                  use z = torch.randn ([| 4L; 6L |], dtype = torch.float32, generator = g2)
                  let xs, os, zs = values x, values out, values z
                  let norm (v: float[]) (row: int) = sqrt (Array.sumBy (fun a -> a * a) v.[row * 6 .. row * 6 + 5])
                  let mean4 (v: float[]) = (List.sumBy (norm v) [ 0..3 ]) / 4.0
                  let e = 2.0 * (0.2 * mean4 zs / mean4 os) ** 2.0
                  for i in 0..23 do
                      let m = xs.[i] + e * os.[i]
                      // e is float32 in diffusers (so here) whatever the dtype: relative 1e-6 of the terms
                      let tol = 1e-6 * (abs xs.[i] + e * abs os.[i] + sqrt (2.0 * e) * abs zs.[i])
                      close tol (values mean).[i] m (sprintf "%A mean[%d] (seeds 12, 13)" dtype i)
                      close tol (values prev).[i] (m + sqrt (2.0 * e) * zs.[i]) (sprintf "%A sample[%d] (seeds 12, 13)" dtype i)
                  // exactly one float32 draw of the sample's shape was taken from the generator
                  use next1 = torch.randn ([| 3L |], generator = g)
                  use next2 = torch.randn ([| 3L |], generator = g2)
                  Expect.isTrue (same next1 next2) (sprintf "%A: one float32 draw" dtype)
              // an output that vanishes everywhere: a zero step (diffusers would divide by zero)
              use x = torch.ones (2L, 3L)
              use zero = torch.zeros (2L, 3L)
              let r = s.StepCorrect(zero, x, generator 1L)
              Expect.isTrue (same r.PrevSample x && same r.PrevSampleMean x) "zero step"
          }

          test "AddNoise: original + noise sigma_k at integer indices, broadcast over any trailing shape" {
              let s = ScoreSdeVeScheduler()
              use original = torch.linspace(-1.0, 1.0, 6L, dtype = torch.float64).reshape(3L, 2L)
              use noise = torch.tensor([| 0.5; -1.0; 2.0; 0.25; -0.75; 1.5 |], dtype = torch.float64).reshape(3L, 2L)
              let o, z = values original, values noise
              for idx, ks in
                  [ torch.tensor ([| 0L; 1999L; 1000L |]), [| 0; 1999; 1000 |]
                    torch.tensor (7L, dtype = torch.int32), [| 7 |] ] do
                  use idx = idx
                  use r = s.AddNoise(original, noise, idx)
                  Expect.equal r.dtype torch.float64 "float64"
                  let v = values r
                  for i in 0..5 do
                      let k = if ks.Length = 1 then ks.[0] else ks.[i / 2]
                      let sigma = discrete 0.01 1348.0 2000 k
                      close (1e-6 * sigma * abs z.[i]) v.[i] (o.[i] + z.[i] * sigma) (sprintf "index %d element %d" k i)
          }

          test "config round trip through scheduler_config.json with diffusers' keys" {
              let dir = Path.Combine(Path.GetTempPath(), "scoresde-ve-config-" + Guid.NewGuid().ToString("N"))
              try
                  let s = ScoreSdeVeScheduler(1000, 0.17, 0.02, 378.0, 1e-4, 2)
                  let path = s.SaveConfig(dir)
                  Expect.equal (Path.GetFileName path) "scheduler_config.json" "file name"
                  Expect.equal (Directory.GetFiles dir).Length 1 "no temporary file left"
                  use doc = JsonDocument.Parse(File.ReadAllText path)
                  let r = doc.RootElement
                  Expect.equal (r.GetProperty("_class_name").GetString()) "ScoreSdeVeScheduler" "class name"
                  Expect.equal (r.GetProperty("num_train_timesteps").GetInt32()) 1000 "num_train_timesteps"
                  Expect.equal (r.GetProperty("snr").GetDouble()) 0.17 "snr"
                  Expect.equal (r.GetProperty("sigma_min").GetDouble()) 0.02 "sigma_min"
                  Expect.equal (r.GetProperty("sigma_max").GetDouble()) 378.0 "sigma_max"
                  Expect.equal (r.GetProperty("sampling_eps").GetDouble()) 1e-4 "sampling_eps"
                  Expect.equal (r.GetProperty("correct_steps").GetInt32()) 2 "correct_steps"
                  Expect.equal (ScoreSdeVeScheduler.FromConfig(dir).Config) s.Config "from directory"
                  Expect.equal (ScoreSdeVeScheduler.FromConfig(path).Config) s.Config "from file"
                  // a diffusers-written file: extra keys ignored, missing keys default, integers for floats
                  File.WriteAllText(
                      path,
                      """{"_class_name": "ScoreSdeVeScheduler", "_diffusers_version": "0.30.0", "sigma_max": 1348, "snr": 0.16, "tensor_format": "pt"}"""
                  )
                  Expect.equal
                      (ScoreSdeVeScheduler.FromConfig(dir).Config)
                      (VeSchedulerConfig(2000, 0.16, 0.01, 1348.0, 1e-5, 1))
                      "defaults and ignored keys"
                  for bad, what in
                      [ """{"snr": "x"}""", "snr"
                        """{"correct_steps": 1.5}""", "correct_steps"
                        """{"_class_name": "ScoreSdeVpScheduler"}""", "_class_name"
                        """[1, 2]""", "JSON object"
                        """{"snr": 0.1""", "not valid JSON" ] do
                      File.WriteAllText(path, bad)
                      let e = Expect.throwsT<FormatException> (fun () -> ScoreSdeVeScheduler.FromConfig(dir) |> ignore) what
                      try
                          ScoreSdeVeScheduler.FromConfig(dir) |> ignore
                      with :? FormatException as e ->
                          Expect.stringContains e.Message what "message"
                  File.WriteAllText(path, """{"sigma_min": 0}""")
                  expectArg "sigmaMin" "0" (fun () -> box (ScoreSdeVeScheduler.FromConfig(dir)))
                  Expect.throwsT<FileNotFoundException>
                      (fun () -> ScoreSdeVeScheduler.FromConfig(Path.Combine(dir, "nope.json")) |> ignore)
                      "missing file"
              finally
                  if Directory.Exists dir then
                      Directory.Delete(dir, true)
          }

          test "errors name the parameter and the value, and leave nothing behind" {
              expectArg "numTrainTimesteps" "0" (fun () -> box (ScoreSdeVeScheduler(numTrainTimesteps = 0)))
              expectArg "snr" "0" (fun () -> box (ScoreSdeVeScheduler(snr = 0.0)))
              expectArg "snr" "nan" (fun () -> box (ScoreSdeVeScheduler(snr = nan)))
              expectArg "sigmaMin" "-1" (fun () -> box (ScoreSdeVeScheduler(sigmaMin = -1.0)))
              expectArg "sigmaMax" "0.005" (fun () -> box (ScoreSdeVeScheduler(sigmaMax = 0.005)))
              expectArg "sigmaMax" "1e+20" (fun () -> box (ScoreSdeVeScheduler(sigmaMax = 1e20)))
              expectArg "samplingEps" "0" (fun () -> box (ScoreSdeVeScheduler(samplingEps = 0.0)))
              expectArg "samplingEps" "1" (fun () -> box (ScoreSdeVeScheduler(samplingEps = 1.0)))
              expectArg "correctSteps" "-1" (fun () -> box (ScoreSdeVeScheduler(correctSteps = -1)))
              let s = ScoreSdeVeScheduler()
              let call (f: unit -> unit) () =
                  f ()
                  null
              expectArg "numInferenceSteps" "0" (call (fun () -> s.SetTimesteps(0)))
              expectArg "samplingEps" "1.5" (call (fun () -> s.SetTimesteps(5, samplingEps = 1.5)))
              expectArg "numInferenceSteps" "-2" (call (fun () -> s.SetSigmas(-2)))
              expectArg "sigmaMin" "-1" (call (fun () -> s.SetSigmas(5, sigmaMin = -1.0)))
              expectArg "sigmaMax" "0.001" (call (fun () -> s.SetSigmas(5, sigmaMax = 0.001)))
              expectArg "samplingEps" "0" (call (fun () -> s.SetSigmas(5, samplingEps = 0.0)))
              Expect.equal (s.Timesteps.numel ()) 2000L "failed calls changed nothing"
              use x = torch.zeros (2L, 3L)
              use t = torch.ones (2L)
              use wrong = torch.zeros (2L, 4L)
              expectArg "modelOutput" "[2, 4]" (fun () -> box (s.StepPred(wrong, t, x)))
              expectArg "modelOutput" "[2, 4]" (fun () -> box (s.StepCorrect(wrong, x)))
              use t3 = torch.ones (3L)
              expectArg "timestep" "[3]" (fun () -> box (s.StepPred(x, t3, x)))
              use t22 = torch.ones (2L, 1L)
              expectArg "timestep" "[2, 1]" (fun () -> box (s.StepPred(x, t22, x)))
              use tBad = torch.tensor ([| 0.5f; 1.5f |])
              expectArg "timestep[1]" "1.5" (fun () -> box (s.StepPred(x, tBad, x)))
              use tNeg = torch.tensor (-0.1)
              expectArg "timestep[0]" "-0.1" (fun () -> box (s.StepPred(x, tNeg, x)))
              use tNan = torch.tensor ([| 0.5; nan |])
              expectArg "timestep[1]" "nan" (fun () -> box (s.StepPred(x, tNan, x)))
              use tBool = torch.tensor ([| true; false |])
              expectArg "timestep" "Bool" (fun () -> box (s.StepPred(x, tBool, x)))
              use ints = torch.zeros ([| 2L; 3L |], dtype = torch.int64)
              expectArg "sample" "Int64" (fun () -> box (s.StepPred(x, t, ints)))
              // an integer output is refused; a float16 one is converted to the sample's dtype (BadInputTests)
              use intOut = torch.zeros ([| 2L; 3L |], dtype = torch.int64)
              expectArg "modelOutput" "Int64" (fun () -> box (s.StepCorrect(intOut, x)))
              use scalar0 = torch.tensor (1.0f)
              expectArg "sample" "got []" (fun () -> box (s.StepPred(scalar0, t, scalar0)))
              use nanOut = torch.tensor([| 1.0f; nanf; 0.0f; 0.0f; 1.0f; 2.0f |]).reshape(2L, 3L)
              expectArg "modelOutput" "NaN" (fun () -> box (s.StepCorrect(nanOut, x)))
              // an index beyond the discrete sigmas (fewer set by SetSigmas than there are timesteps)
              s.SetTimesteps(10)
              s.SetSigmas(5)
              expectArg "timestep[0]" "SetSigmas" (fun () -> box (s.StepPred(x, t, x)))
              expectArg "modelOutput" "null" (fun () -> box (s.StepPred(null, t, x)))
              expectArg "timestep" "null" (fun () -> box (s.StepPred(x, null, x)))
              expectArg "sample" "null" (fun () -> box (s.StepCorrect(x, null)))
              use idxFloat = torch.tensor ([| 0.0; 1.0 |])
              expectArg "timesteps" "Float64" (fun () -> box (s.AddNoise(x, x, idxFloat)))
              use idxBig = torch.tensor ([| 4L; 5L |])
              expectArg "timesteps[1]" "5" (fun () -> box (s.AddNoise(x, x, idxBig)))
              use idxNeg = torch.tensor ([| -1L; 0L |])
              expectArg "timesteps[0]" "-1" (fun () -> box (s.AddNoise(x, x, idxNeg)))
              use idx3 = torch.tensor ([| 0L; 0L; 0L |])
              expectArg "timesteps" "[3]" (fun () -> box (s.AddNoise(x, x, idx3)))
              expectArg "noise" "[2, 4]" (fun () -> box (s.AddNoise(x, wrong, idx3)))
          }

          test "a disposed generator is refused (TorchSharp would draw from the global generator)" {
              let s = ScoreSdeVeScheduler()
              use x = torch.zeros (2L, 3L)
              use t = torch.tensor (0.5f)
              let before = values (torch.random.get_rng_state ())
              let g = generator 3L
              s.StepPred(x, t, x, g) |> ignore
              g.Dispose()
              let expectDisposed (f: unit -> obj) =
                  let e = throwsOf<ObjectDisposedException> "disposed generator" (fun () -> f () |> ignore)
                  Expect.equal e.ObjectName "generator" "names the parameter"
              expectDisposed (fun () -> box (s.StepPred(x, t, x, g)))
              expectDisposed (fun () -> box (s.StepCorrect(x, x, g)))
              let fresh = generator 4L
              fresh.Dispose()
              expectDisposed (fun () -> box (s.StepCorrect(x, x, fresh)))
              Expect.sequenceEqual (values (torch.random.get_rng_state ())) before "global generator untouched"
          }

          test "steps leave the caller's tensors alone and create only their two results" {
              let s = ScoreSdeVeScheduler()
              s.SetTimesteps(5)
              s.SetSigmas(5)
              use g = generator 1L
              use x = torch.randn ([| 2L; 3L; 4L |], generator = g)
              use out = torch.randn ([| 2L; 3L; 4L |], generator = g)
              use t = s.Timesteps.[2L]
              use idx = torch.tensor ([| 1L; 3L |])
              let copies = [ x, x.clone (), "sample"; out, out.clone (), "modelOutput"; t, t.clone (), "timestep" ]
              let c0 = created ()
              let p = s.StepPred(out, t, x, g)
              Expect.equal (created () - c0) 2L "StepPred (float32, CPU): the sample and the mean only"
              let c1 = created ()
              let c = s.StepCorrect(out, x, g)
              Expect.equal (created () - c1) 2L "StepCorrect (float32, CPU): the sample and the mean only"
              use n = s.AddNoise(x, out, idx)
              for a, b, name in copies do
                  Expect.isFalse a.IsInvalid (sprintf "%s not disposed" name)
                  Expect.isTrue (same a b) (sprintf "%s unchanged" name)
              for r in [ p; c ] do
                  Expect.isFalse (obj.ReferenceEquals(r.PrevSample, x) || obj.ReferenceEquals(r.PrevSampleMean, x)) "fresh outputs"
                  r.PrevSample.Dispose()
                  r.PrevSampleMean.Dispose()
          }

          test "without a generator, noise comes from a private stream (global generator untouched)" {
              let before = values (torch.random.get_rng_state ())
              let s = ScoreSdeVeScheduler()
              use x = torch.zeros (2L, 3L)
              use t = torch.ones (2L)
              let o1 = s.StepPred(x, t, x)
              let o2 = s.StepPred(x, t, x)
              Expect.isFalse (same o1.PrevSample o2.PrevSample) "fresh noise every call"
              use out = torch.ones (2L, 3L)
              let c1 = s.StepCorrect(out, x)
              let c2 = s.StepCorrect(out, x)
              Expect.isFalse (same c1.PrevSample c2.PrevSample) "fresh corrector noise every call"
              Expect.sequenceEqual (values (torch.random.get_rng_state ())) before "global state unchanged"
          } ]
