namespace ScoreSde

open System
open TorchSharp

/// The mean and covariance of a set of feature vectors (float64 on the CPU, owned by this value).
type FeatureStatistics =
    {
        /// Mean [D].
        Mean: Tensor
        /// Covariance [D, D] with the unbiased 1 / (N - 1) normalisation (as numpy.cov and the
        /// published FID code compute it).
        Covariance: Tensor
        /// Number of feature vectors N.
        Count: int64
    }

    interface IDisposable with
        member s.Dispose() =
            s.Mean.Dispose()
            s.Covariance.Dispose()

/// The Frechet distance between Gaussians fitted to two sets of features (Dowson and Landau 1982;
/// the "FID" of Heusel et al. 2017 when the features come from Inception): the squared 2-Wasserstein
/// distance between N(m1, S1) and N(m2, S2),
///   d^2 = |m1 - m2|^2 + tr S1 + tr S2 - 2 tr (S1^(1/2) S2 S1^(1/2))^(1/2).
/// Everything is computed in float64; the square roots come from symmetric eigendecompositions
/// (S1^(1/2) = U diag(sqrt l) U^T, then the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2)), with
/// eigenvalues below zero (rounding of singular covariances) taken as zero.
[<RequireQualifiedAccess>]
module Frechet =
    /// Mean and covariance of features [N, D] (any float dtype and device; N >= 2).
    let statistics (features: Tensor) : FeatureStatistics =
        Native.ensureLoaded ()
        Check.floating "features" features
        if features.dim () <> 2L || features.size 0 < 2L || features.size 1 < 1L then
            Check.fail "features" features.shape "an [N, D] tensor with N >= 2 feature vectors"
        use scope = torch.NewDisposeScope()
        let f = features.detach().cpu().to_type(torch.float64)
        let n = f.size 0
        let mean = f.mean ([| 0L |])
        let centred = f.sub (mean)
        use s = Tensors.scalar (1.0 / float (n - 1L))
        let cov = centred.t().matmul(centred).mul_(s)
        if not (torch.isfinite(cov).all().item<bool>()) then
            Check.fail "features" "NaN or infinite values" "finite"
        { Mean = mean.MoveToOuterDisposeScope(); Covariance = cov.MoveToOuterDisposeScope(); Count = n }

    /// The symmetric positive semi-definite square root of a symmetric matrix (float64).
    let private sqrtm (s: Tensor) : Tensor =
        use scope = torch.NewDisposeScope()
        let struct (l, u) = torch.linalg.eigh (s)
        use zero = Tensors.scalar 0.0
        let r = l.clamp_min(zero).sqrt()
        u.mul(r.unsqueeze 0L).matmul(u.t ()).MoveToOuterDisposeScope()

    /// tr (S1^(1/2) S2 S1^(1/2))^(1/2) for symmetric positive semi-definite S1, S2 (float64).
    let traceSqrtProduct (s1: Tensor) (s2: Tensor) : float =
        use scope = torch.NewDisposeScope()
        let h = sqrtm s1
        let m = h.matmul(s2).matmul(h)
        use half = Tensors.scalar 0.5
        let sym = (Tensors.add m (m.t ())).mul_(half)
        use zero = Tensors.scalar 0.0
        torch.linalg.eigvalsh(sym).clamp_min(zero).sqrt().sum().item<float>()

    /// The squared Frechet distance between Gaussians with these means and covariances.
    let ofMoments (mean1: Tensor) (cov1: Tensor) (mean2: Tensor) (cov2: Tensor) : float =
        Native.ensureLoaded ()
        for name, t in [ "mean1", mean1; "cov1", cov1; "mean2", mean2; "cov2", cov2 ] do
            Check.floating name t
        let d = mean1.numel ()
        if mean1.dim () <> 1L || mean2.shape <> mean1.shape then
            Check.fail "mean2" mean2.shape (sprintf "a vector like mean1 [%d]" d)
        for name, c in [ "cov1", cov1; "cov2", cov2 ] do
            if c.shape <> [| d; d |] then
                Check.fail name c.shape (sprintf "a [%d, %d] matrix" d d)
        use scope = torch.NewDisposeScope()
        let f (t: Tensor) = t.detach().cpu().to_type(torch.float64)
        let m1, s1, m2, s2 = f mean1, f cov1, f mean2, f cov2
        let diff = m1.sub (m2)
        let meanTerm = diff.dot(diff).item<float>()
        let traces = s1.trace().item<float>() + s2.trace().item<float>()
        // rounding can leave -1e-12 for identical inputs; a distance is never negative
        max 0.0 (meanTerm + traces - 2.0 * traceSqrtProduct s1 s2)

    /// The squared Frechet distance between the Gaussians of two feature statistics.
    let distance (a: FeatureStatistics) (b: FeatureStatistics) : float =
        Check.notNull "a" a
        Check.notNull "b" b
        ofMoments a.Mean a.Covariance b.Mean b.Covariance

    /// The squared Frechet distance between two sets of features [N1, D] and [N2, D].
    let ofFeatures (a: Tensor) (b: Tensor) : float =
        use sa = statistics a
        use sb = statistics b
        if sa.Mean.numel () <> sb.Mean.numel () then
            Check.fail "b" b.shape (sprintf "features of the same width as a (%d)" (sa.Mean.numel ()))
        distance sa sb
