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

/// Gaussian data N(mu, diag(s^2)) in D dimensions: every marginal p_t is Gaussian, so the score is
/// closed-form: s(x, t) = -(x - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2).
type Gaussian =
    { Mu: float[]
      S: float[] }

    member g.Dim = g.Mu.Length

    /// Marginal mean and variance of dimension d at time t (float64, on the host).
    member g.MarginalAt (sde: VpSde) (t: float) (d: int) =
        let a = Math.Exp(-0.25 * t * t * (sde.BetaMax - sde.BetaMin) - 0.5 * t * sde.BetaMin)
        let v = 1.0 - a * a
        a * g.Mu.[d], a * a * g.S.[d] * g.S.[d] + v

/// A 64-dimensional Gaussian. Per-sample Langevin norms need many dimensions to concentrate
/// (|z| / |score| fluctuates wildly per sample in 2 or 4 dimensions), so corrector tests use this.
let gauss64 =
    { Mu = Array.init 64 (fun d -> Math.Sin(float d))
      S = Array.init 64 (fun d -> 0.3 + 0.7 * float (d % 5) / 4.0) }

/// Average over dimensions of |sample mean - mu| + |sample std - s| for [N, D] samples.
let averageMomentError (g: Gaussian) (mean: float[]) (std: float[]) =
    Array.init g.Dim (fun d -> abs (mean.[d] - g.Mu.[d]) + abs (std.[d] - g.S.[d])) |> Array.average

/// The exact noise-prediction model of Gaussian data, computed independently of the library's SDE
/// code (its own alpha/sigma formulas in float64, then cast to x's dtype).
let gaussianNoiseModel (sde: VpSde) (g: Gaussian) : Tensor -> Tensor -> Tensor =
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        let t64 = t.to_type(torch.float64).reshape([| -1L; 1L |])
        let m = t64 * t64 * (-0.25 * (sde.BetaMax - sde.BetaMin)) - t64 * (0.5 * sde.BetaMin)
        let a = m.exp ()
        let var0 = 1.0 - a * a
        let sigma = var0.sqrt ()
        let mu = torch.tensor(g.Mu, dtype = torch.float64).reshape([| 1L; -1L |])
        let s2 = torch.tensor(g.S |> Array.map (fun s -> s * s), dtype = torch.float64).reshape([| 1L; -1L |])
        let var = a * a * s2 + var0
        let x64 = x.to_type (torch.float64)
        let score = -(x64 - a * mu) / var
        let eps = -sigma * score
        eps.to_type(x.dtype).MoveToOuterDisposeScope()

/// The exact score model of Gaussian data.
let gaussianScoreModel (sde: VpSde) (g: Gaussian) : Tensor -> Tensor -> Tensor =
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        let t64 = t.to_type(torch.float64).reshape([| -1L; 1L |])
        let m = t64 * t64 * (-0.25 * (sde.BetaMax - sde.BetaMin)) - t64 * (0.5 * sde.BetaMin)
        let a = m.exp ()
        let mu = torch.tensor(g.Mu, dtype = torch.float64).reshape([| 1L; -1L |])
        let s2 = torch.tensor(g.S |> Array.map (fun s -> s * s), dtype = torch.float64).reshape([| 1L; -1L |])
        let var = a * a * s2 + (1.0 - a * a)
        let score = -(x.to_type (torch.float64) - a * mu) / var
        score.to_type(x.dtype).MoveToOuterDisposeScope()

/// The means of a 2-D mixture of 8 equal isotropic Gaussians (std 0.1) on the unit circle: the first
/// problem of the quality benchmark (tests/ScoreSde.Quality).
let ringMeans = Array.init 8 (fun k -> let a = 2.0 * Math.PI * float k / 8.0 in [| Math.Cos a; Math.Sin a |])

/// The ring mixture's exact noise prediction: p_t is the mixture of N(alpha_t m_k, v_t I) with
/// v_t = alpha_t^2 0.01 + sigma_t^2, so eps = -sigma_t sum_k r_k (alpha_t m_k - x) / v_t with
/// responsibilities r_k by a softmax; in float64 with its own alpha/sigma formulas, cast to x's dtype.
let ringNoiseModel (sde: VpSde) : Tensor -> Tensor -> Tensor =
    fun (x: Tensor) (t: Tensor) ->
        use scope = torch.NewDisposeScope()
        let t64 = t.to_type(torch.float64).reshape([| -1L; 1L |]) // [B, 1] (or [1, 1])
        let m = t64 * t64 * (-0.25 * (sde.BetaMax - sde.BetaMin)) - t64 * (0.5 * sde.BetaMin)
        let a = m.exp ()
        let s2 = 1.0 - a * a
        let v = a * a * 0.01 + s2 // [B, 1]
        let means = torch.tensor(Array.concat ringMeans, dtype = torch.float64).reshape([| 8L; 2L |])
        let x64 = x.to_type (torch.float64)
        let centres = a.unsqueeze (2L) * means.unsqueeze (0L) // [B, 8, 2]
        let diff = centres - x64.unsqueeze (1L) // alpha m_k - x
        let logits = -(diff.square().sum(2L)) / (v * 2.0) // [B, 8]
        let r = torch.softmax (logits, 1)
        let score = (r.unsqueeze (2L) * diff).sum(1L) / v
        let eps = -(s2.sqrt ()) * score
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

// ---- FsCheck generators for valid domain values ----

/// A valid VP-SDE: BetaMin in [0.01, 2], BetaMax in [BetaMin, BetaMin + 30].
type SdeParams = SdeParams of VpSde
/// A time in [1e-4, 1].
type Time = Time of float
/// A torch seed.
type Seed = Seed of int64

type Arbitraries =
    static member SdeParams() : Arbitrary<SdeParams> =
        gen {
            let! a = Gen.choose (1, 200)
            let! b = Gen.choose (0, 3000)
            let betaMin = float a / 100.0
            return SdeParams(VpSde.create betaMin (betaMin + float b / 100.0))
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
