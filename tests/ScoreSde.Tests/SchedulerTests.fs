module ScoreSde.Tests.SchedulerTests

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open ScoreSde.CSharp
open ScoreSde.Tests.Common

/// The golden set-up: x = arange(384).reshape(3, 8, 8, 4) / 384 permuted to (4, 3, 8, 8).
let initial (dtype: torch.ScalarType) =
    let n = 4L * 3L * 8L * 8L
    use a = torch.arange (n, dtype = dtype)
    use r = a.reshape (3L, 8L, 8L, 4L)
    use p = r.permute (3L, 0L, 1L, 2L)
    p / float n

/// Run the golden loop through the facade: model_output = x * t / (t + 1), one generator seeded 0.
let private loop (steps: int) (dtype: torch.ScalarType) =
    let s = ScoreSdeVpScheduler()
    s.SetTimesteps(steps)
    use g = generator 0L
    let mutable x = initial dtype
    let mutable mean = x.clone ()
    for i in 0 .. steps - 1 do
        use scope = torch.NewDisposeScope()
        use ti = s.Timesteps.[int64 i]
        let tv = ti.to_type (dtype) * torch.ones ([| 4L |], dtype = dtype)
        let tb = tv.reshape (-1L, 1L, 1L, 1L)
        let out = x * tb / (tb + 1.0)
        let struct (prev, prevMean) =
            let o = s.StepPred(out, x, tv, g)
            struct (o.PrevSample, o.PrevSampleMean)
        x.Dispose()
        mean.Dispose()
        x <- prev.MoveToOuterDisposeScope()
        mean <- prevMean.MoveToOuterDisposeScope()
    x, mean

let private sumAbs (t: Tensor) = scalar (t.abs().sum(torch.float64))

[<Tests>]
let tests =
    testList
        "ScoreSdeVpScheduler (diffusers compatibility)"
        [ test "10-step seeded loop reproduces the Python class (shared golden output)" {
              use doc = JsonDocument.Parse(File.ReadAllText(NoiseTests.fixture "vp_scheduler_loop10.json"))
              let res = doc.RootElement.GetProperty("result")
              let x, mean = loop 10 torch.float32
              use x = x
              use mean = mean
              // float32 sums of 384 values of size ~5: a few ulps each
              closeRel 2e-6 (sumAbs x) (res.GetProperty("sum_abs_prev_sample").GetDouble()) "sum |prev_sample|"
              closeRel 2e-6 (scalar (x.abs().mean())) (res.GetProperty("mean_abs_prev_sample").GetDouble()) "mean |prev_sample|"
              closeRel 2e-6 (sumAbs mean) (res.GetProperty("sum_abs_prev_sample_mean").GetDouble()) "sum |prev_sample_mean|"
              let first = values x
              res.GetProperty("prev_sample_first8").EnumerateArray()
              |> Seq.iteri (fun i e -> close (2e-6 * (1.0 + abs first.[i])) first.[i] (e.GetDouble()) (sprintf "prev_sample[%d]" i))
          }

          test "1000-step seeded loops reproduce the Python class (float32 and float64)" {
              use doc = JsonDocument.Parse(File.ReadAllText(NoiseTests.fixture "vp_scheduler_loop1000.json"))
              for case in doc.RootElement.GetProperty("cases").EnumerateArray() do
                  let steps = case.GetProperty("steps").GetInt32()
                  let dtype = if case.GetProperty("dtype").GetString() = "float64" then torch.float64 else torch.float32
                  let x, mean = loop steps dtype
                  use x = x
                  use mean = mean
                  // Every step matches Python to ~1e-7 (the single-step test above), but the loop's
                  // timesteps come from libtorch 2.10's linspace, some of which are a float32 ulp from
                  // PyTorch 1.13's, and 1000 steps of a state growing from ~0.5 to ~15 accumulate the
                  // rounding: measured 2.3e-6 relative on the float32 sum (5e-5 before StepPred used
                  // diffusers' float32 coefficients), ~1e-8 in float64.
                  let rtol = if dtype = torch.float64 then 1e-7 else 1e-5
                  closeRel rtol (sumAbs x) (case.GetProperty("sum_abs_prev_sample").GetDouble()) (sprintf "%d steps %A sum |x|" steps dtype)
                  closeRel
                      rtol
                      (sumAbs mean)
                      (case.GetProperty("sum_abs_prev_sample_mean").GetDouble())
                      (sprintf "%d steps %A sum |mean|" steps dtype)
                  let v = values x
                  case.GetProperty("prev_sample_first8").EnumerateArray()
                  |> Seq.iteri (fun i e ->
                      close (rtol * (1.0 + abs v.[i])) v.[i] (e.GetDouble()) (sprintf "%d steps %A x[%d]" steps dtype i))
                  case.GetProperty("prev_sample_last4").EnumerateArray()
                  |> Seq.iteri (fun i e ->
                      let j = v.Length - 4 + i
                      close (rtol * (1.0 + abs v.[j])) v.[j] (e.GetDouble()) (sprintf "%d steps %A x[-%d]" steps dtype (4 - i)))
          }

          test "single steps at the first, middle and last timestep match Python to 1e-6 (float32) and 1e-12 (float64)" {
              // Error measure per step: max |ours - Python| / max |Python| over the step's elements. An
              // element-wise relative error is meaningless here: x_mean = a x + b out cancels to near zero
              // in some elements, where any rounding difference is a large fraction of the value.
              use doc = JsonDocument.Parse(File.ReadAllText(NoiseTests.fixture "vp_scheduler_steps.json"))
              let shape =
                  doc.RootElement.GetProperty("shape").EnumerateArray()
                  |> Seq.map (fun e -> e.GetInt64())
                  |> Array.ofSeq
              let floats (e: JsonElement) = e.EnumerateArray() |> Seq.map (fun v -> v.GetDouble()) |> Array.ofSeq
              let worst = Collections.Generic.Dictionary<string, float>()
              for case in doc.RootElement.GetProperty("cases").EnumerateArray() do
                  let steps, index = case.GetProperty("steps").GetInt32(), case.GetProperty("index").GetInt32()
                  let dtype = if case.GetProperty("dtype").GetString() = "float64" then torch.float64 else torch.float32
                  let what = sprintf "%d steps, timestep %d, %A" steps index dtype
                  let s = ScoreSdeVpScheduler()
                  s.SetTimesteps(steps)
                  use gIn = generator (100L + int64 index)
                  use x = torch.randn (shape, dtype = dtype, generator = gIn)
                  use out = torch.randn (shape, dtype = dtype, generator = gIn)
                  Expect.sequenceEqual (values x |> Array.take 4) (floats (case.GetProperty("x_first4"))) (what + ": same inputs as Python")
                  // Python's t, exactly: PyTorch 1.13's float32 linspace rounds some points one ulp away from
                  // libtorch 2.10's (which SetTimesteps uses), e.g. timestep 500 of 1000: 0.49999994 vs 0.5
                  let tPy = case.GetProperty("t").GetDouble()
                  use ti = s.Timesteps.[int64 index]
                  close 6e-8 (scalar ti) tPy (what + ": our timestep within an ulp of Python's")
                  use t = full [| shape.[0] |] tPy dtype
                  use g = generator 7L
                  let o = s.StepPred(out, x, t, g)
                  use sample = o.PrevSample
                  use mean = o.PrevSampleMean
                  for name, ours in [ "prev_sample", sample; "prev_sample_mean", mean ] do
                      let py = floats (case.GetProperty(name))
                      let v = values ours
                      let err = (Array.map2 (fun a b -> abs (a - b)) v py |> Array.max) / (py |> Array.map abs |> Array.max)
                      let key = sprintf "%A %s" dtype name
                      worst.[key] <- max err (if worst.ContainsKey key then worst.[key] else 0.0)
                      // float32: the coefficients are Python's float32 values; the fused kernel's sums round
                      // differently from Python's six element-wise operations by an ulp or two (~1e-7).
                      // float64: sigma_t from expm1 against Python's naive sqrt(1 - exp(2 m)), whose rounding
                      // (1.1e-16 / sigma^2) is 5e-13 relative in sigma at t = eps, times the step's score
                      // coefficient (up to 1.1 at 10 steps): below 1e-12.
                      let tol = if dtype = torch.float64 then 1e-12 else 1e-6
                      Expect.isLessThan err tol (sprintf "%s, %s: max |diff| / max |Python| = %.3g" what name err)
              for kv in worst do
                  printfn "StepPred against Python, %s: max |diff| / max |Python| over the steps = %.3g" kv.Key kv.Value
          }

          test "one step against an independent float64 hand computation (per-sample t)" {
              let s = ScoreSdeVpScheduler(betaMin = 0.2, betaMax = 10.0)
              s.SetTimesteps(7)
              use x = torch.tensor([| 0.5; -1.0; 2.0; 0.25 |], dtype = torch.float64).reshape(2L, 2L)
              use out = torch.tensor([| 0.1; 0.3; -0.2; 0.4 |], dtype = torch.float64).reshape(2L, 2L)
              use t = torch.tensor ([| 0.9; 0.3 |], dtype = torch.float64)
              use g = generator 5L
              let o = s.StepPred(out, x, t, g)
              use g2 = generator 5L
              let z = values (torch.randn ([| 2L; 2L |], dtype = torch.float64, generator = g2))
              let xs, os, ts = values x, values out, [| 0.9; 0.3 |]
              let sample, mean = values o.PrevSample, values o.PrevSampleMean
              for i in 0..3 do
                  let t = ts.[i / 2]
                  let beta = 0.2 + t * 9.8
                  let m = -0.25 * t * t * 9.8 - 0.5 * t * 0.2
                  let std = sqrt (1.0 - exp (2.0 * m))
                  let score = -os.[i] / std
                  let dt = -1.0 / 7.0
                  let xm = xs.[i] + (-0.5 * beta * xs.[i] - beta * score) * dt
                  close 1e-12 mean.[i] xm (sprintf "mean[%d]" i)
                  close 1e-12 sample.[i] (xm + sqrt beta * sqrt (-dt) * z.[i]) (sprintf "sample[%d]" i)
              let mutable a: Tensor = null
              let mutable b: Tensor = null
              o.Deconstruct(&a, &b)
              Expect.isTrue
                  (obj.ReferenceEquals(a, o.PrevSample) && obj.ReferenceEquals(b, o.PrevSampleMean))
                  "deconstructs to (prevSample, prevSampleMean)"
          }

          test "properties, timesteps and identity input scaling" {
              let s = ScoreSdeVpScheduler()
              Expect.equal s.Config (SchedulerConfig(2000, 0.1, 20.0, 1e-3)) "config"
              Expect.isNull s.Timesteps "null until set"
              Expect.equal s.Order 1 "order"
              Expect.equal s.Length 2000 "length"
              Expect.equal s.InitNoiseSigma 1.0 "init noise sigma"
              s.SetTimesteps(5)
              Expect.equal s.Timesteps.dtype torch.float32 "float32 timesteps"
              let ts = values s.Timesteps
              Expect.equal ts.Length 5 "5 timesteps"
              close 1e-7 ts.[0] 1.0 "first"
              close 1e-7 ts.[4] 1e-3 "last"
              close 1e-6 ts.[1] (1.0 - (1.0 - 1e-3) / 4.0) "second"
              use x = torch.ones (2L, 3L)
              Expect.isTrue (obj.ReferenceEquals(s.ScaleModelInput(x), x)) "identity"
          }

          test "StepCorrect: Langevin step by hand (batch-averaged and per-sample norms), and AddNoise is the forward marginal" {
              let s = ScoreSdeVpScheduler()
              s.SetTimesteps(10)
              use x = torch.tensor([| 0.5; -1.0; 2.0; 0.25 |], dtype = torch.float64).reshape(2L, 2L)
              use out = torch.tensor([| 0.1; 0.3; -0.2; 0.4 |], dtype = torch.float64).reshape(2L, 2L)
              use t = torch.tensor (0.5, dtype = torch.float64)
              let m = -0.25 * 0.25 * 19.9 - 0.5 * 0.5 * 0.1
              let sigma = sqrt (1.0 - exp (2.0 * m))
              // alpha_i = 1 - beta_i of [0.4, 0.5]: (alpha(0.5) / alpha(0.4))^2
              let m4 = -0.25 * 0.16 * 19.9 - 0.5 * 0.4 * 0.1
              let alphaI = exp (2.0 * (m - m4))
              let xs, os = values x, values out
              for norm in [ None; Some LangevinNorm.BatchMean; Some LangevinNorm.PerSample ] do
                  use g = generator 8L
                  let o =
                      match norm with
                      | None -> s.StepCorrect(out, x, t, g, 0.2)
                      | Some n -> s.StepCorrect(out, x, t, g, 0.2, n)
                  use g2 = generator 8L
                  let z = values (torch.randn ([| 2L; 2L |], dtype = torch.float64, generator = g2))
                  let grad row = [| for j in 0..1 -> -os.[2 * row + j] / sigma |]
                  let gn row = sqrt (grad row |> Array.sumBy (fun v -> v * v))
                  let zn row = sqrt ([| z.[2 * row]; z.[2 * row + 1] |] |> Array.sumBy (fun v -> v * v))
                  for row in 0..1 do
                      // the default averages |z| and |s| over the batch (the paper's code, diffusers' step_correct)
                      let e =
                          match norm with
                          | Some LangevinNorm.PerSample -> 2.0 * alphaI * (0.2 * zn row / gn row) ** 2.0
                          | _ -> 2.0 * alphaI * (0.2 * (zn 0 + zn 1) / (gn 0 + gn 1)) ** 2.0
                      for j in 0..1 do
                          let i = 2 * row + j
                          let what = sprintf "%A: element %d" norm i
                          close 1e-12 (values o.PrevSampleMean).[i] (xs.[i] + e * (grad row).[j]) (what + " mean")
                          close 1e-12 (values o.PrevSample).[i] (xs.[i] + e * (grad row).[j] + sqrt (2.0 * e) * z.[i]) (what + " sample")
              use noise = torch.tensor([| 1.0; 2.0; 3.0; 4.0 |], dtype = torch.float64).reshape(2L, 2L)
              let noisy = values (s.AddNoise(x, noise, t))
              let ns = values noise
              for i in 0..3 do
                  close 1e-12 noisy.[i] (exp m * xs.[i] + sigma * ns.[i]) (sprintf "add_noise[%d]" i)
          }

          test "config round trip through scheduler_config.json with diffusers' keys" {
              let dir = Path.Combine(Path.GetTempPath(), "scoresde-config-" + Guid.NewGuid().ToString("N"))
              try
                  let s = ScoreSdeVpScheduler(1000, 0.05, 12.5, 1e-4)
                  let path = s.SaveConfig(dir)
                  Expect.equal (Path.GetFileName path) "scheduler_config.json" "file name"
                  use doc = JsonDocument.Parse(File.ReadAllText path)
                  let r = doc.RootElement
                  Expect.equal (r.GetProperty("_class_name").GetString()) "ScoreSdeVpScheduler" "class name"
                  Expect.equal (r.GetProperty("num_train_timesteps").GetInt32()) 1000 "num_train_timesteps"
                  Expect.equal (r.GetProperty("beta_min").GetDouble()) 0.05 "beta_min"
                  Expect.equal (r.GetProperty("beta_max").GetDouble()) 12.5 "beta_max"
                  Expect.equal (r.GetProperty("sampling_eps").GetDouble()) 1e-4 "sampling_eps"
                  Expect.equal (ScoreSdeVpScheduler.FromConfig(dir).Config) s.Config "from directory"
                  Expect.equal (ScoreSdeVpScheduler.FromConfig(path).Config) s.Config "from file"
                  // a diffusers-written file: extra keys ignored, missing keys default, integers for floats
                  File.WriteAllText(
                      path,
                      """{"_class_name": "ScoreSdeVpScheduler", "_diffusers_version": "0.30.0", "beta_max": 20, "extra": [1, 2]}"""
                  )
                  Expect.equal
                      (ScoreSdeVpScheduler.FromConfig(dir).Config)
                      (SchedulerConfig(2000, 0.1, 20.0, 1e-3))
                      "defaults and ignored keys"
                  for bad, what in
                      [ """{"beta_min": "x"}""", "beta_min"
                        """{"num_train_timesteps": 2.5}""", "num_train_timesteps"
                        """{"_class_name": "DDPMScheduler"}""", "_class_name"
                        """[1, 2]""", "JSON object"
                        """{"beta_min": 0.1""", "not valid JSON" ] do
                      File.WriteAllText(path, bad)
                      let e = throwsOf<FormatException> what (fun () -> ScoreSdeVpScheduler.FromConfig(dir) |> ignore)
                      Expect.stringContains e.Message what "message"
                  File.WriteAllText(path, """{"beta_min": -1}""")
                  try
                      ScoreSdeVpScheduler.FromConfig(dir) |> ignore
                      failtest "expected an error for beta_min = -1"
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName "betaMin" "names betaMin"
                  Expect.throwsT<FileNotFoundException>
                      (fun () -> ScoreSdeVpScheduler.FromConfig(Path.Combine(dir, "nope.json")) |> ignore)
                      "missing file"
              finally
                  if Directory.Exists dir then
                      Directory.Delete(dir, true)
          }

          test "errors: StepPred before SetTimesteps, bad parameters, shapes and nulls" {
              let s = ScoreSdeVpScheduler()
              use x = torch.zeros (2L, 3L)
              use t = torch.ones (2L)
              let e = throwsOf<InvalidOperationException> "StepPred before SetTimesteps" (fun () -> s.StepPred(x, x, t) |> ignore)
              Expect.stringContains e.Message "SetTimesteps" "StepPred's error names SetTimesteps"
              let e = throwsOf<InvalidOperationException> "StepCorrect before SetTimesteps" (fun () -> s.StepCorrect(x, x, t) |> ignore)
              Expect.stringContains e.Message "SetTimesteps" "StepCorrect's error names SetTimesteps"
              let expectArg (name: string) (value: string) (f: unit -> obj) =
                  try
                      f () |> ignore
                      failtestf "expected an ArgumentException for %s" name
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name (sprintf "parameter name for %s" name)
                      Expect.stringContains e.Message value (sprintf "message shows the value for %s" name)
              expectArg "numInferenceSteps" "0" (fun () ->
                  s.SetTimesteps(0)
                  null)
              expectArg "samplingEps" "0" (fun () -> box (ScoreSdeVpScheduler(samplingEps = 0.0)))
              expectArg "samplingEps" "1.5" (fun () -> box (ScoreSdeVpScheduler(samplingEps = 1.5)))
              expectArg "betaMin" "0" (fun () -> box (ScoreSdeVpScheduler(betaMin = 0.0)))
              expectArg "betaMax" "0.05" (fun () -> box (ScoreSdeVpScheduler(betaMax = 0.05)))
              expectArg "numTrainTimesteps" "0" (fun () -> box (ScoreSdeVpScheduler(numTrainTimesteps = 0)))
              s.SetTimesteps(10)
              use wrong = torch.zeros (2L, 4L)
              expectArg "score" "[2, 4]" (fun () -> box (s.StepPred(wrong, x, t)))
              use t3 = torch.ones (3L)
              expectArg "t" "[3]" (fun () -> box (s.StepPred(x, x, t3)))
              use tBad = torch.tensor ([| 0.5f; 1.5f |])
              expectArg "t[1]" "1.5" (fun () -> box (s.StepPred(x, x, tBad)))
              expectArg "score" "null" (fun () -> box (s.StepPred(null, x, t)))
              expectArg "x" "null" (fun () -> box (s.StepPred(x, null, t)))
              expectArg "t" "null" (fun () -> box (s.StepPred(x, x, null)))
              expectArg "snr" "-1" (fun () -> box (s.StepCorrect(x, x, t, null, -1.0)))
              expectArg "norm" "42" (fun () -> box (s.StepCorrect(x, x, t, null, 0.16, enum 42)))
          }

          test "the facade never modifies or disposes the caller's tensors" {
              let s = ScoreSdeVpScheduler()
              s.SetTimesteps(3)
              use g = generator 1L
              use x = torch.randn ([| 2L; 3L |], generator = g)
              use out = torch.randn ([| 2L; 3L |], generator = g)
              use t = (full [| 2L |] (0.5) torch.float32)
              let xc, oc, tc = x.clone (), out.clone (), t.clone ()
              let o = s.StepPred(out, x, t, g)
              let c = s.StepCorrect(out, x, t, g)
              let n = s.AddNoise(x, out, t)
              for a, b, name in [ x, xc, "x"; out, oc, "score"; t, tc, "t" ] do
                  Expect.isFalse a.IsInvalid (sprintf "%s not disposed" name)
                  Expect.isTrue (same a b) (sprintf "%s unchanged" name)
              Expect.isFalse (obj.ReferenceEquals(o.PrevSample, x)) "fresh output"
          }

          test "without a generator, noise comes from a private stream (global generator untouched)" {
              let before = values (torch.random.get_rng_state ())
              let s = ScoreSdeVpScheduler()
              s.SetTimesteps(3)
              use x = torch.zeros (2L, 3L)
              use t = torch.ones (2L)
              let o1 = s.StepPred(x, x, t)
              let o2 = s.StepPred(x, x, t)
              Expect.isFalse (same o1.PrevSample o2.PrevSample) "fresh noise every call"
              Expect.sequenceEqual (values (torch.random.get_rng_state ())) before "global state unchanged"
          } ]
