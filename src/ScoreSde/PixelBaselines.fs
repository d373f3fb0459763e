namespace ScoreSde

open System
open TorchSharp

/// Two reference models of 8-bit images that any image likelihood is compared with, fitted to a
/// training set and scored per test image in bits per dimension (float64 throughout):
/// - `categorical`: every pixel independent, each with its own distribution over the 256 levels,
///   estimated from the training counts with additive smoothing (alpha = 1 is Laplace's rule,
///   (count + 1) / (N + 256)). It is a model of the discrete levels themselves, so its bits/dim is
///   -log2 P(b) / D exactly (no dequantisation).
/// - `gaussian`: one full-covariance Gaussian on uniformly dequantised pixels y = b + u,
///   u ~ U(0, 1) per pixel (in units of one level, so the bound on the discrete data's bits/dim is
///   -log2 p(y) / D with no offset; the same number as the paper's y = (b + u) / 256 with its log2 256
///   offset). Both the fit and the score are exact expectations over the dequantisation noise, not
///   one draw: the fitted mean is mean(b) + 1/2 and the covariance cov(b) + I / 12 (the maximum-
///   likelihood Gaussian of the dequantised training set, moments taken over u; cov(b) with 1 / N),
///   and a test image scores E_u[-log2 N(b + u; m, S)] / D
///   = [D ln 2 pi + ln det S + (b + 1/2 - m)^T S^-1 (b + 1/2 - m) + tr(S^-1) / 12] / (2 D ln 2).
[<RequireQualifiedAccess>]
module PixelBaselines =
    let private flat (param: string) (levels: Tensor) : Tensor =
        Check.notNull param levels
        if levels.dtype <> torch.uint8 || levels.dim () < 2L || levels.shape.[0] < 1L then
            Check.fail param levels.shape "uint8 pixel levels [N, ...] with N >= 1"
        levels.reshape([| levels.shape.[0]; -1L |]).cpu()

    let private checkSameShape (train: Tensor) (test: Tensor) =
        if train.shape.[1..] <> test.shape.[1..] then
            Check.fail "test" test.shape (sprintf "images shaped like the training images %A" train.shape.[1..])

    /// Per test image bits/dim under independent per-pixel categoricals over the 256 levels, fitted
    /// to `train` (uint8 [N, ...]) with additive smoothing `alpha` > 0 (1: Laplace).
    let categorical (alpha: float) (train: Tensor) (test: Tensor) : float[] =
        Native.ensureLoaded ()
        Check.positive "alpha" alpha
        checkSameShape train test
        use scope = torch.NewDisposeScope()
        let tr = flat "train" train
        let te = flat "test" test
        let n, d = tr.shape.[0], tr.shape.[1]
        // counts [D * 256]: pixel p at level b counts at p * 256 + b
        use scale = Scalar.op_Implicit 256L
        use first = Scalar.op_Implicit 0L
        use stop = Scalar.op_Implicit d
        use step = Scalar.op_Implicit 1L
        let offsets = torch.arange(first, stop, step, dtype = torch.int64).mul(scale).unsqueeze(0L)
        let index = tr.to_type(torch.int64).add(offsets, step).reshape([| -1L |])
        let counts = torch.zeros ([| d * 256L |], dtype = torch.float64)
        let ones = torch.ones ([| index.shape.[0] |], dtype = torch.float64)
        use one = Tensors.scalar 1.0
        counts.index_add_ (0L, index, ones, one) |> ignore
        use a = Tensors.scalar alpha
        use total = Tensors.scalar (float n + 256.0 * alpha)
        let logProb = counts.add(a, one).div(total).log()
        let testIndex = te.to_type(torch.int64).add(offsets, step).reshape([| -1L |])
        let perPixel = logProb.index_select(0L, testIndex).reshape([| te.shape.[0]; d |])
        use perBit = Tensors.scalar (-1.0 / (float d * Math.Log 2.0))
        let bits = perPixel.sum([| 1L |]).mul(perBit)
        Tensors.toHost bits

    /// Per test image bits/dim (expected over the dequantisation noise) under the full-covariance
    /// Gaussian of the uniformly dequantised training images (uint8 [N, ...]).
    let gaussian (train: Tensor) (test: Tensor) : float[] =
        Native.ensureLoaded ()
        checkSameShape train test
        use scope = torch.NewDisposeScope()
        let tr = (flat "train" train).to_type(torch.float64)
        let te = (flat "test" test).to_type(torch.float64)
        let n, d = tr.shape.[0], tr.shape.[1]
        let mean = tr.mean ([| 0L |])
        let centred = tr.sub (mean)
        use invN = Tensors.scalar (1.0 / float n)
        use twelfth = Tensors.scalar (1.0 / 12.0)
        let eye = torch.eye (d, dtype = torch.float64)
        let cov = Tensors.add (centred.t().matmul(centred).mul(invN)) (eye.mul (twelfth))
        // m = mean(b) + 1/2; a test image's expected y is b + 1/2, so y - m = b - mean(b)
        let chol = torch.linalg.cholesky cov
        let logDet = chol.diagonal().log().sum().item<float>() * 2.0
        let diff = te.sub (mean)
        // solve L z = diff^T: the quadratic form is |z|^2 per image
        let z = torch.linalg.solve_triangular (chol, diff.t (), upper = false)
        let quad = (Tensors.square z).sum([| 0L |])
        let traceInv = torch.cholesky_inverse(chol).trace().item<float>()
        let constant = float d * Math.Log(2.0 * Math.PI) + logDet + traceInv / 12.0
        let denom = 2.0 * float d * Math.Log 2.0
        Tensors.toHost quad |> Array.map (fun q -> (constant + q) / denom)
