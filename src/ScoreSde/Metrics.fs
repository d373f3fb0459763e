namespace ScoreSde

open System
open TorchSharp

/// Sample-based distances between point clouds, for judging samplers and trained models.
[<RequireQualifiedAccess>]
module Metrics =
    /// Wasserstein-1 distance between two one-dimensional empirical distributions (any sizes):
    /// the integral over u in (0, 1) of |F^-1(u) - G^-1(u)|, walking the merged breakpoints i/n and
    /// j/m of the two quantile functions. The arrays need not be sorted; they are not modified.
    let wasserstein1D (a: float[]) (b: float[]) : float =
        Check.notNull "a" a
        Check.notNull "b" b
        if a.Length = 0 then
            Check.fail "a" a "a non-empty sample"
        if b.Length = 0 then
            Check.fail "b" b "a non-empty sample"
        let a = Array.sort a
        let b = Array.sort b
        let n, m = int64 a.Length, int64 b.Length
        let mutable i, j = 0L, 0L
        let mutable u = 0.0
        let mutable total = 0.0
        while i < n && j < m do
            // next breakpoint: min((i + 1) / n, (j + 1) / m), compared exactly in integers
            let ci, cj = (i + 1L) * m, (j + 1L) * n
            let next = if ci <= cj then float (i + 1L) / float n else float (j + 1L) / float m
            total <- total + (next - u) * abs (a.[int i] - b.[int j])
            u <- next
            if ci <= cj then
                i <- i + 1L
            if cj <= ci then
                j <- j + 1L
        total

    /// `count` unit directions in `dim` dimensions (normalised Gaussian draws from a generator seeded
    /// with `seed`), as a float64 [dim, count] tensor. The same seed gives the same directions.
    let directions (dim: int) (count: int) (seed: int64) : Tensor =
        Native.ensureLoaded ()
        Check.positiveInt "dim" dim
        Check.positiveInt "count" count
        use scope = torch.NewDisposeScope()
        use g = new torch.Generator(uint64 seed, torch.CPU)
        let v = torch.randn ([| int64 dim; int64 count |], dtype = torch.float64, generator = g)
        let norms = v.norm (0, true, 2.0f)
        (v / norms).MoveToOuterDisposeScope()

    let private checkCloud (param: string) (x: Tensor) =
        Check.floating param x
        if x.dim () <> 2L || x.shape.[0] < 1L then
            Check.fail param x.shape "a [N, D] tensor of N >= 1 points"
        use finite = torch.isfinite(x).all()
        if not (finite.item<bool>()) then
            Check.fail param x.shape "free of NaN and infinite values"

    /// Sliced Wasserstein-1 distance between point clouds x [N, D] and y [M, D]: the mean over
    /// `count` fixed random unit directions (from `seed`) of the 1-D Wasserstein-1 distance between
    /// the projections. Computed in float64 on the host; x and y are not modified.
    let slicedWasserstein (count: int) (seed: int64) (x: Tensor) (y: Tensor) : float =
        checkCloud "x" x
        checkCloud "y" y
        if x.shape.[1] <> y.shape.[1] then
            Check.fail "y" y.shape (sprintf "points of the same dimension as x (%d)" x.shape.[1])
        use scope = torch.NewDisposeScope()
        let dirs = directions (int x.shape.[1]) count seed
        let project (p: Tensor) =
            let proj = p.detach().cpu().to_type(torch.float64).matmul(dirs).t().contiguous()
            let flat = proj.data<float>().ToArray()
            let len = int p.shape.[0]
            Array.init count (fun k -> Array.sub flat (k * len) len)
        let px, py = project x, project y
        Array.init count (fun k -> wasserstein1D px.[k] py.[k]) |> Array.average

    /// Sliced Wasserstein-1 with the library's default slicing: 128 directions from seed 0.
    let slicedWasserstein1 (x: Tensor) (y: Tensor) : float = slicedWasserstein 128 0L x y
