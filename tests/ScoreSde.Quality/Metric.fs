/// Sliced Wasserstein-1 distance between two equally sized sample sets.
module ScoreSde.Quality.Metric

open System
open TorchSharp

type Tensor = torch.Tensor

/// `count` unit directions in D dimensions (float64), fixed by the seed: the core's slicing
/// (`Metrics.directions`), so figures agree with `Metrics.slicedWasserstein` for the same seed.
let directions (dim: int) (count: int) (seed: int64) : Tensor = ScoreSde.Metrics.directions dim count seed

/// The projections of samples [N, D] onto the directions, sorted: [directions, N].
let sortedProjections (dirs: Tensor) (x: Tensor) : Tensor =
    use scope = torch.NewDisposeScope()
    let p = dirs.t().matmul(x.to_type(torch.float64).t()).contiguous()
    let struct (s, _) = p.sort (1L)
    s.MoveToOuterDisposeScope()

/// A reference sample set, projected and sorted once.
type Reference(dirs: Tensor, samples: Tensor) =
    let sorted = sortedProjections dirs samples
    member _.Count = samples.shape.[0]

    /// Mean over the directions of the 1-D Wasserstein-1 distance between the projections of x and of
    /// the reference: for equal sample counts, the mean absolute difference of the sorted projections.
    member _.Distance(x: Tensor) : float =
        if x.shape.[0] <> samples.shape.[0] then
            invalidArg "x" "the two sample sets must have the same size"
        use scope = torch.NewDisposeScope()
        let s = sortedProjections dirs x
        (s - sorted).abs().mean().item<float>()

    interface IDisposable with
        member _.Dispose() = sorted.Dispose()
