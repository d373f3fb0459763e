/// Shared test helpers: toy problems with closed-form scores, comparisons, FsCheck generators.
module ScoreSde.Tests.Common

open System
open System.IO
open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
open ScoreSde

type Tensor = torch.Tensor

do Native.ensureLoaded ()

/// A fresh directory under the system temp folder (scoresde-tests-<name>-<guid>), deleted with everything
/// in it when disposed: bind it with `use`, so it goes also when the test fails.
type TempDir(name: string) =
    let path = Path.Combine(Path.GetTempPath(), sprintf "scoresde-tests-%s-%s" name (Guid.NewGuid().ToString "N"))
    do Directory.CreateDirectory path |> ignore
    member _.Path = path

    interface IDisposable with
        member _.Dispose() =
            // A failing deletion must not hide the test's own outcome: report it instead.
            try
                if Directory.Exists path then
                    Directory.Delete(path, true)
            with e ->
                eprintfn "warning: could not delete the test directory %s: %s" path e.Message

/// The build configuration the tests were built in (bin/<configuration>/<tfm>/), e.g. Release: the
/// library's outputs in that configuration exist.
let buildConfiguration = DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent.Name

/// A fresh temporary directory for one test (see TempDir).
let tempDir (name: string) = new TempDir(name)

/// The exception of type 'E that `f` throws; fails the test when `f` returns or throws another type.
let throwsOf<'E when 'E :> exn> (what: string) (f: unit -> unit) : 'E =
    let outcome =
        try
            f ()
            Choice1Of2()
        with
        | :? 'E as e -> Choice2Of2 e
        | e -> failtestf "%s: expected %s, got %s: %s" what typeof<'E>.Name (e.GetType().Name) e.Message
    match outcome with
    | Choice2Of2 e -> e
    | Choice1Of2() -> failtestf "%s: expected %s, nothing was thrown" what typeof<'E>.Name

/// A host double as a TorchSharp Scalar.
let sc (v: float) : Scalar = Scalar.op_Implicit v

/// Scalar of a 0-d (or 1-element) tensor as a double.
let scalar (t: Tensor) : float =
    use d = t.detach ()
    use c = d.cpu ()
    use f = c.to_type (torch.float64)
    f.item<float>()

/// Host copy of a tensor as doubles, flattened.
/// Every intermediate is bound and disposed: an unreferenced intermediate's finalizer can free its
/// native tensor while the next native call still reads it (seen under the GC pressure of large
/// arrays).
let values (t: Tensor) : float[] =
    use d = t.detach ()
    use c = d.cpu ()
    use f = c.to_type (torch.float64)
    use k = f.contiguous ()
    use flat = k.flatten ()
    flat.data<float>().ToArray()

/// Fail with a message unless |actual - expected| <= tol.
let close (tol: float) (actual: float) (expected: float) (what: string) =
    if Double.IsNaN actual || abs (actual - expected) > tol then
        failtestf "%s: got %.10g, expected %.10g (tolerance %.3g, error %.3g)" what actual expected tol (abs (actual - expected))

/// Element-wise comparison: |actual.[i] - expected.[i]| <= tol (1 + |expected.[i]|) for every i; `what i`
/// names element i in the message.
let closeElements (tol: float) (actual: float[]) (expected: float[]) (what: int -> string) =
    Expect.equal actual.Length expected.Length (sprintf "%s: element count" (what 0))
    for i in 0 .. expected.Length - 1 do
        close (tol * (1.0 + abs expected.[i])) actual.[i] expected.[i] (what i)

/// Relative comparison.
let closeRel (rtol: float) (actual: float) (expected: float) (what: string) = close (rtol * abs expected) actual expected what

/// A tensor of the given shape filled with v.
let full (shape: int64[]) (v: float) (dtype: torch.ScalarType) = torch.full (shape, sc v, dtype = dtype)

/// Same shape and exactly the same values.
let same (a: Tensor) (b: Tensor) = a.shape = b.shape && values a = values b

/// Every element finite.
let allFinite (t: Tensor) = values t |> Array.forall (fun v -> not (Double.IsNaN v || Double.IsInfinity v))

/// A generator with a known seed; tests print it in their failure messages.
let generator (seed: int64) = new torch.Generator(uint64 seed, torch.CPU)

/// alpha(t) and sigma(t) of the marginal x_t | x_0 ~ N(alpha x_0, sigma^2 I) from the paper's formulas
/// (Song et al. 2021; REFERENCE.md), written here independently of the library's SDE code:
/// VP alpha = e^m, sigma = sqrt(1 - e^(2m)); sub-VP the same alpha and sigma = 1 - e^(2m); VE alpha = 1,
/// sigma = sigma_min (sigma_max / sigma_min)^t; m = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2.
let marginalCoefficients (sde: Sde) (t: float) =
    match sde with
    | Sde.Vp s ->
        let m = -0.25 * t * t * (s.BetaMax - s.BetaMin) - 0.5 * t * s.BetaMin
        Math.Exp m, Math.Sqrt(1.0 - Math.Exp(2.0 * m))
    | Sde.SubVp s ->
        let m = -0.25 * t * t * (s.BetaMax - s.BetaMin) - 0.5 * t * s.BetaMin
        Math.Exp m, 1.0 - Math.Exp(2.0 * m)
    | Sde.Ve s -> 1.0, s.SigmaMin * Math.Pow(s.SigmaMax / s.SigmaMin, t)

/// beta(t) of a VP or sub-VP SDE (the tests' own formula).
let betaOf (sde: Sde) (t: float) =
    match sde with
    | Sde.Vp s
    | Sde.SubVp s -> s.BetaMin + t * (s.BetaMax - s.BetaMin)
    | Sde.Ve _ -> failwith "VE has no beta"

/// The three SDEs with the paper's parameters, named.
let allSdes = [ "VP", Sde.standardVp; "sub-VP", Sde.standardSubVp; "VE", Sde.standardVe ]

/// Gaussian data N(mu, diag(s^2)): every marginal p_t is Gaussian, N(alpha_t mu, alpha_t^2 s^2 + sigma_t^2),
/// so the score is closed-form: s(x, t) = -(x - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2).
type Gaussian =
    { Mu: float[]
      S: float[] }

    member g.Dim = g.Mu.Length

    /// Marginal mean and variance of dimension d at time t (float64, on the host).
    member g.MarginalAt (sde: Sde) (t: float) (d: int) =
        let a, s = marginalCoefficients sde t
        a * g.Mu.[d], a * a * g.S.[d] * g.S.[d] + s * s

/// A 64-dimensional Gaussian. Per-sample Langevin norms need many dimensions to concentrate
/// (|z| / |score| fluctuates wildly per sample in 2 or 4 dimensions), so corrector tests use this.
let gauss64 =
    { Mu = Array.init 64 (fun d -> Math.Sin(float d))
      S = Array.init 64 (fun d -> 0.3 + 0.7 * float (d % 5) / 4.0) }

/// Average over dimensions of |sample mean - mu| + |sample std - s| for [N, D] samples.
let averageMomentError (g: Gaussian) (mean: float[]) (std: float[]) =
    Array.init g.Dim (fun d -> abs (mean.[d] - g.Mu.[d]) + abs (std.[d] - g.S.[d])) |> Array.average

/// [B, 1] float64 columns of alpha_t and sigma_t for a time tensor (0-d or one time per sample),
/// from `marginalCoefficients` on the host.
let private coefficientColumns (sde: Sde) (t: Tensor) (batch: int64) =
    let ts = values t
    let ts = if ts.Length = 1 then Array.create (int batch) ts.[0] else ts
    let column (f: float -> float) = torch.tensor(ts |> Array.map f, dtype = torch.float64).reshape([| -1L; 1L |])
    column (marginalCoefficients sde >> fst), column (marginalCoefficients sde >> snd)

/// The exact score of Gaussian data as float64 [B, D] (and the sigma column), computed independently of
/// the library's SDE code, with tensor-to-tensor operations only (no Scalars, which TorchSharp can
/// finalise mid-call when created inline).
let private gaussianScore (sde: Sde) (g: Gaussian) (x: Tensor) (t: Tensor) : Tensor * Tensor =
    let a, sigma = coefficientColumns sde t x.shape.[0]
    let mu = torch.tensor(g.Mu, dtype = torch.float64).reshape([| 1L; -1L |])
    let s2 = torch.tensor(g.S |> Array.map (fun s -> s * s), dtype = torch.float64).reshape([| 1L; -1L |])
    let var = a * a * s2 + sigma * sigma
    (x.to_type (torch.float64) - a * mu).neg().div(var), sigma

/// The exact noise-prediction model of Gaussian data (its own alpha/sigma formulas in float64, then
/// cast to x's dtype).
let gaussianNoiseModel (sde: Sde) (g: Gaussian) : Tensor -> Tensor -> Tensor =
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        let score, sigma = gaussianScore sde g x t
        (sigma.neg () * score).to_type(x.dtype).MoveToOuterDisposeScope()

/// The exact score model of Gaussian data.
let gaussianScoreModel (sde: Sde) (g: Gaussian) : Tensor -> Tensor -> Tensor =
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        let score, _ = gaussianScore sde g x t
        score.to_type(x.dtype).MoveToOuterDisposeScope()

/// The exact data-prediction model of Gaussian data: Tweedie's x_0 = (x + sigma_t^2 s) / alpha_t.
let gaussianDataModel (sde: Sde) (g: Gaussian) : Tensor -> Tensor -> Tensor =
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        let score, sigma = gaussianScore sde g x t
        let a, _ = coefficientColumns sde t x.shape.[0]
        ((x.to_type (torch.float64) + sigma * sigma * score) / a).to_type(x.dtype).MoveToOuterDisposeScope()

/// A probability-flow run with a fixed-step solver on `steps` intervals of `grid` down to `eps`.
let fixedFlow (solver: OdeSolver) (grid: TimeGrid) (steps: int) (eps: float) =
    { Sampling.flow with
        Method = Method.ProbabilityFlow(OdeMethod.FixedStep solver)
        Schedule = Schedule.create grid steps eps }

/// A PC run of `steps` uniform steps down to 1e-3, returning the last step's mean (the paper's sampler).
let pcRun (predictor: Predictor) (corrector: Corrector) (steps: int) =
    { Sampling.pc with
        Method = Method.PredictorCorrector(predictor, corrector)
        Schedule = Schedule.uniform steps 1e-3 }

/// Noise for the deterministic samplers (which do not draw from it).
let unusedNoise () = Noise.fromSeed 0L torch.CPU

/// The means of a 2-D mixture of 8 equal isotropic Gaussians (std 0.1) on the unit circle: the first
/// problem of the quality benchmark (tests/ScoreSde.Quality).
let ringMeans = Array.init 8 (fun k -> let a = 2.0 * Math.PI * float k / 8.0 in [| Math.Cos a; Math.Sin a |])

/// The ring mixture's exact noise prediction: p_t is the mixture of N(alpha_t m_k, v_t I) with
/// v_t = alpha_t^2 0.01 + sigma_t^2, so eps = -sigma_t sum_k r_k (alpha_t m_k - x) / v_t with
/// responsibilities r_k by a softmax; in float64 with its own alpha/sigma formulas, cast to x's dtype.
let ringNoiseModel (sde: Sde) : Tensor -> Tensor -> Tensor =
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        let a, sigma = coefficientColumns sde t x.shape.[0] // [B, 1]
        let v = a * a * 0.01 + sigma * sigma // [B, 1]
        let means = torch.tensor(Array.concat ringMeans, dtype = torch.float64).reshape([| 8L; 2L |])
        let x64 = x.to_type (torch.float64)
        let centres = a.unsqueeze (2L) * means.unsqueeze (0L) // [B, 8, 2]
        let diff = centres - x64.unsqueeze (1L) // alpha m_k - x
        let logits = -(diff.square().sum(2L)) / (v * 2.0) // [B, 8]
        let r = torch.softmax (logits, 1)
        let score = (r.unsqueeze (2L) * diff).sum(1L) / v
        let eps = sigma.neg () * score
        eps.to_type(x.dtype).MoveToOuterDisposeScope()

/// n exact samples [n, 2] of the ring mixture in float64 from a generator.
let ringSample (n: int64) (g: torch.Generator) : Tensor =
    use scope = torch.NewDisposeScope()
    let k = torch.randint (8L, [| n |], generator = g)
    let means = torch.tensor(Array.concat ringMeans, dtype = torch.float64).reshape([| 8L; 2L |])
    let z = torch.randn ([| n; 2L |], dtype = torch.float64, generator = g)
    (means.index_select (0L, k) + z * 0.1).MoveToOuterDisposeScope()

/// Per-dimension sample mean and standard deviation of [N, D] samples.
let moments (x: Tensor) : float[] * float[] =
    use x64 = x.to_type (torch.float64)
    use m = x64.mean ([| 0L |])
    use s = x64.std (0L)
    values m, values s

/// A DPM-Solver run as these tests write it: the method's settings with the schedule, finish and observer
/// of the run, in one record (converted to the entry point's `Sampling` by `sampling`).
type DpmRun =
    { Algorithm: DpmAlgorithm
      Method: DpmMethod
      Order: int
      LowerOrderFinal: LowerOrderFinal
      ThirdOrder: DpmThirdOrder
      Arithmetic: DpmArithmetic
      Thresholding: Thresholding
      Grid: TimeGrid
      Steps: int
      Eps: float
      Denoise: bool
      Observer: Observer option }

    /// The method's own settings.
    member r.Settings: DpmSolverSettings =
        { Algorithm = r.Algorithm
          Method = r.Method
          Order = r.Order
          LowerOrderFinal = r.LowerOrderFinal
          ThirdOrder = r.ThirdOrder
          Arithmetic = r.Arithmetic
          Thresholding = r.Thresholding }

    /// The run through the entry point.
    member r.Sampling: Sampling =
        { Method = Method.DpmSolver r.Settings
          Schedule = Schedule.create r.Grid r.Steps r.Eps
          Finish = (if r.Denoise then Finish.Tweedie else Finish.NoFinish)
          Observer = r.Observer
          Condition = None
          CheckFinite = true }

/// The library's defaults: `DpmSolver.defaults` with `Sampling.dpmSolver`'s schedule and finish.
let dpmDefaults: DpmRun =
    let s = DpmSolver.defaults
    let schedule = Sampling.dpmSolver.Schedule
    { Algorithm = s.Algorithm
      Method = s.Method
      Order = s.Order
      LowerOrderFinal = s.LowerOrderFinal
      ThirdOrder = s.ThirdOrder
      Arithmetic = s.Arithmetic
      Thresholding = s.Thresholding
      Grid = schedule.Grid
      Steps = schedule.Steps
      Eps = schedule.Eps
      Denoise = (Sampling.dpmSolver.Finish = Finish.Tweedie)
      Observer = None }

/// A run from xT through the entry point (the DPM solvers draw no noise).
let dpmSample (sde: Sde) (model: Model) (run: DpmRun) (xT: Tensor) = Sampler.sample sde model run.Sampling (unusedNoise ()) xT

// ---- FsCheck generators for valid domain values ----

/// A valid SDE of any of the three kinds: VP and sub-VP with BetaMin in [0.01, 2] and BetaMax in
/// [BetaMin, BetaMin + 30]; VE with SigmaMin in [0.001, 0.5] and SigmaMax in [2 SigmaMin, 100].
type SdeParams = SdeParams of Sde
/// A time in [1e-4, 1].
type Time = Time of float
/// A torch seed.
type Seed = Seed of int64

type Arbitraries =
    static member SdeParams() : Arbitrary<SdeParams> =
        gen {
            let! kind = Gen.choose (0, 2)
            let! a = Gen.choose (1, 200)
            let! b = Gen.choose (0, 3000)
            let! c = Gen.choose (1, 500)
            let! d = Gen.choose (0, 1000)
            let betaMin = float a / 100.0
            let sigmaMin = float c / 1000.0
            return
                SdeParams(
                    match kind with
                    | 0 -> Sde.vp betaMin (betaMin + float b / 100.0)
                    | 1 -> Sde.subVp betaMin (betaMin + float b / 100.0)
                    | _ -> Sde.ve sigmaMin (2.0 * sigmaMin + (100.0 - 2.0 * sigmaMin) * float d / 1000.0)
                )
        }
        |> Arb.fromGen

    static member Time() : Arbitrary<Time> =
        gen {
            // log-uniform over [1e-4, 1] so small times are exercised
            let! u = Gen.choose (0, 100000)
            return Time(Math.Pow(10.0, -4.0 * float u / 100000.0))
        }
        |> Arb.fromGen

    static member Seed() : Arbitrary<Seed> = Gen.choose (0, Int32.MaxValue) |> Gen.map (int64 >> Seed) |> Arb.fromGen

/// FsCheck configuration with the domain generators; Expecto prints the replay seed of a failure.
let propConfig = { FsCheckConfig.defaultConfig with maxTest = 60; arbitrary = [ typeof<Arbitraries> ] }
