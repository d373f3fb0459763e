/// Concurrent callers (issue 11, item 4): no implicit TorchSharp Scalar in the libraries (an IL scan),
/// and every public entry point run from several threads while another one forces collections.
module ScoreSde.Tests.ConcurrencyTests

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open Expecto
open Mono.Cecil
open Mono.Cecil.Cil
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

// ---- the IL scan ----

/// A call that creates a TorchSharp Scalar: its implicit conversions, ToScalar, its constructors.
let private createsScalar (i: Instruction) =
    match i.Operand with
    | :? MethodReference as m ->
        (m.ReturnType.FullName = "TorchSharp.Scalar" && (m.Name = "op_Implicit" || m.Name = "ToScalar"))
        || (i.OpCode = OpCodes.Newobj && m.DeclaringType.FullName = "TorchSharp.Scalar")
    | _ -> false

/// Stored to a local (bound: `use s = ...`) or returned to a caller that binds it.
let private bound (i: Instruction) =
    not (isNull i.Next)
    && (i.Next.OpCode.Code.ToString().StartsWith "Stloc" || i.Next.OpCode = OpCodes.Ret)

/// TorchSharp's members that create a Scalar they do not bind (the alpha of `a + b`, the exponent of
/// `square`, the operand of `t * 2.0`, ...), and the members calling those (three levels up).
let private unsafeTorchSharpMembers =
    lazy
        (let ts = AssemblyDefinition.ReadAssembly(typeof<torch.Tensor>.Assembly.Location)
         let methods =
             [ for t in ts.MainModule.GetTypes() do
                   yield! t.Methods ]
             |> List.filter (fun m -> m.HasBody)
         let found = HashSet<string>()
         for m in methods do
             if m.Body.Instructions |> Seq.exists (fun i -> createsScalar i && not (bound i)) then
                 found.Add m.FullName |> ignore
         for _ in 1..3 do
             for m in methods do
                 if not (found.Contains m.FullName) then
                     let callsUnsafe =
                         m.Body.Instructions
                         |> Seq.exists (fun i ->
                             match i.Operand with
                             | :? MethodReference as r -> found.Contains r.FullName
                             | _ -> false)
                     if callsUnsafe then
                         found.Add m.FullName |> ignore
         found)

/// The call sites of an assembly that pass TorchSharp an unbound Scalar: a Scalar created and not
/// stored, or a call to a TorchSharp member that creates one inside.
let unboundScalarSites (path: string) : string list =
    let unsafeMembers = unsafeTorchSharpMembers.Force()
    let a = AssemblyDefinition.ReadAssembly(path: string)
    [ for t in a.MainModule.GetTypes() do
          for m in t.Methods do
              if m.HasBody then
                  for i in m.Body.Instructions do
                      if createsScalar i && not (bound i) then
                          yield sprintf "%s::%s creates a Scalar it does not bind" t.FullName m.Name
                      else
                          match i.Operand with
                          | :? MethodReference as r when
                              r.DeclaringType.Scope.Name.StartsWith "TorchSharp"
                              && not (createsScalar i)
                              && unsafeMembers.Contains r.FullName
                              ->
                              yield sprintf "%s::%s calls %s (an inline Scalar inside)" t.FullName m.Name r.FullName
                          | _ -> () ]

// ---- the stress test ----

let private sde = Sde.standardVp

/// The exact noise prediction of N(0, I) data under the VP-SDE (every marginal is N(0, I), so the score
/// is -x and eps = sigma_t x), written without a TorchSharp operator that creates a Scalar: the test's
/// own model must not be what a collection breaks.
let private model =
    Model.noise (fun x t ->
        use sigma = Sde.sigma sde t
        use column = sigma.reshape (-1L, 1L)
        x.mul (column))

/// Every public entry point once, for one thread's seed: named results as host arrays.
let private everyEntryPoint (seed: int64) : (string * float[]) list =
    let take (t: Tensor) =
        use t = t
        values t
    use g = generator seed
    let noise = Noise.fromGenerator g
    use xT = torch.randn ([| 16L; 4L |], dtype = torch.float64, generator = g)
    let sample name sampling = name, take (Sampler.sample sde model sampling noise xT).Samples
    let dpm m = { Sampling.dpmSolver with Method = Method.DpmSolver { DpmSolver.defaults with Method = m } }
    let vp = ScoreSde.CSharp.ScoreSdeVpScheduler()
    vp.SetTimesteps 10
    let ve = ScoreSde.CSharp.ScoreSdeVeScheduler()
    ve.SetTimesteps 10
    ve.SetSigmas 10
    use x32 = torch.randn ([| 16L; 4L |], generator = g)
    use out32 = torch.randn ([| 16L; 4L |], generator = g)
    use t = torch.tensor (0.7f)
    let step name (r: ScoreSde.CSharp.SdeOutput) =
        use m = r.PrevSampleMean
        name, take r.PrevSample
    let training () =
        use data = torch.randn ([| 64L; 2L |], dtype = torch.float32, generator = g)
        use net = new ScoreNet({ ScoreNet.defaultConfig 2 with Hidden = 16; Layers = 2 }, g)
        let r = Training.train sde { Training.defaults with Steps = 4; BatchSize = 16 } net data g
        use ema = r.Ema
        let weights = ema.parameters () |> Seq.collect (fun p -> values p) |> Seq.toArray
        Array.append r.Losses weights
    [ sample "PC" { Sampling.pc with Schedule = Schedule.uniform 20 1e-3 }
      sample "flow, RK4" (fixedFlow OdeSolver.Rk4 TimeGrid.Uniform 10 1e-3)
      sample "flow, Dopri5" { Sampling.flow with Method = Method.ProbabilityFlow(OdeMethod.dopri5 1e-3 1e-3) }
      sample "DPM-Solver" (dpm DpmMethod.MultiStep)
      "encode", take (Sampler.encode sde model (OdeMethod.dopri5 1e-3 1e-3) Sampling.flow.Schedule xT).Latent
      "likelihood",
      (let s = { Likelihood.defaults with Method = OdeMethod.dopri5 1e-3 1e-3 }
       use r = Likelihood.compute sde model s noise xT
       values r.LogLikelihood)
      step "StepPred" (vp.StepPred(out32, x32, t, g))
      step "StepCorrect" (vp.StepCorrect(out32, x32, t, g))
      step "VE StepPred" (ve.StepPred(out32, t, x32, g))
      step "VE StepCorrect" (ve.StepCorrect(out32, x32, g))
      "training", training () ]

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Concurrent callers"
        [ test "no implicit Scalar in ScoreSde.dll and ScoreSde.CSharp.dll (IL scan)" {
              // the scan finds such sites where they exist: the tests' own `a * 0.4 + b` for instance
              let own = unboundScalarSites (typeof<TempDir>.Assembly.Location)
              Expect.isGreaterThan own.Length 0 "the scan finds the test assembly's operators"
              for library in [ typeof<Model>.Assembly; typeof<ScoreSde.CSharp.VpSde>.Assembly ] do
                  let sites = unboundScalarSites library.Location |> List.distinct
                  Expect.isEmpty
                      sites
                      (sprintf "%s passes TorchSharp unbound Scalars at:\n%s" (library.GetName().Name) (String.Join("\n", sites)))
          }

          test "every entry point from 4 threads under forced collections equals the same calls alone" {
              let seeds = [| 101L; 102L; 103L; 104L |]
              // alone, one after the other
              let reference = seeds |> Array.map everyEntryPoint
              let failures = Collections.Concurrent.ConcurrentQueue<string>()
              let stop = ref 0
              let collector =
                  Thread(
                      (fun () ->
                          while Volatile.Read(&stop.contents) = 0 do
                              GC.Collect()
                              GC.WaitForPendingFinalizers()),
                      IsBackground = true
                  )
              collector.Start()
              let watch = Stopwatch.StartNew()
              let mutable rounds = 0
              try
                  // bounded: at least 2 rounds, no new round after 20 s, at most 200
                  while rounds < 200 && (rounds < 2 || watch.Elapsed.TotalSeconds < 20.0) do
                      let workers =
                          seeds
                          |> Array.mapi (fun k seed ->
                              Thread(fun () ->
                                  try
                                      let results = everyEntryPoint seed
                                      for (name, got), (_, expected) in List.zip results reference.[k] do
                                          if got <> expected then
                                              failures.Enqueue(
                                                  sprintf "round %d, seed %d: %s differs from the call alone" rounds seed name
                                              )
                                  with e ->
                                      let firstLine = e.Message.Split('\n').[0]
                                      let frames =
                                          e.StackTrace.Split('\n') |> Array.filter (fun l -> l.Contains "ScoreSde") |> Array.truncate 4
                                      failures.Enqueue(
                                          sprintf
                                              "round %d, seed %d: %s: %s\n%s"
                                              rounds
                                              seed
                                              (e.GetType().Name)
                                              firstLine
                                              (String.Join("\n", frames))
                                      )))
                      for w in workers do
                          w.Start()
                      for w in workers do
                          w.Join()
                      rounds <- rounds + 1
              finally
                  Volatile.Write(&stop.contents, 1)
                  collector.Join()
              printfn "stress test: %d rounds of 4 threads in %.1f s" rounds watch.Elapsed.TotalSeconds
              let all = Seq.toList failures
              if not all.IsEmpty then
                  failtestf
                      "%d failures over %d rounds of 4 threads, the first ones:\n%s"
                      all.Length
                      rounds
                      (String.Join("\n", List.truncate 12 all))
              Expect.isGreaterThanOrEqual rounds 2 "at least two rounds ran"
          } ]
