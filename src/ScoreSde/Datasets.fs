namespace ScoreSde

open System
open TorchSharp

/// Procedurally generated 2-D datasets, scaled to roughly unit variance per coordinate (the scale
/// the VP-SDE's N(0, I) prior expects).
[<RequireQualifiedAccess>]
type ToyDataset =
    /// Eight Gaussians (std 0.1) at equal angles on a circle of radius sqrt 2.
    | Ring
    /// Two interleaved half circles with Gaussian jitter (std 0.05 before scaling).
    | Moons
    /// A 2-D swiss roll: radius proportional to the angle over 1.5 turns, jitter std 0.05.
    | SwissRoll
    /// Uniform on the 8 dark squares of a 4 x 4 checkerboard over [-1.5, 1.5]^2.
    | Checkerboard

/// An affine map between data space and the space a model was trained in, per coordinate:
/// model = (data - Shift) / Scale, data = model * Scale + Shift.
type Standardisation = { Shift: float[]; Scale: float[] }

[<RequireQualifiedAccess>]
module ToyDataset =
    /// Every built-in dataset.
    let all = [ ToyDataset.Ring; ToyDataset.Moons; ToyDataset.SwissRoll; ToyDataset.Checkerboard ]

    /// The dataset's name on the command line.
    let name (dataset: ToyDataset) =
        match dataset with
        | ToyDataset.Ring -> "ring"
        | ToyDataset.Moons -> "moons"
        | ToyDataset.SwissRoll -> "swissroll"
        | ToyDataset.Checkerboard -> "checkerboard"

    /// The dataset with that name (case-insensitive), if any.
    let tryParse (text: string) =
        if isNull text then
            None
        else
            all
            |> List.tryFind (fun d -> String.Equals(name d, text.Trim(), StringComparison.OrdinalIgnoreCase))

    /// `n` points [n, 2] of the dataset in the requested dtype on the CPU, every random draw taken
    /// from `generator` (its state advances; the same seed gives the same points).
    let sample (dataset: ToyDataset) (n: int) (dtype: torch.ScalarType) (generator: torch.Generator) : Tensor =
        Native.ensureLoaded ()
        Check.positiveInt "n" n
        Check.liveGenerator "generator" generator
        if not (dtype = torch.float32 || dtype = torch.float64) then
            Check.fail "dtype" dtype "float32 or float64"
        use scope = torch.NewDisposeScope()
        let f64 = torch.float64
        let n64 = int64 n
        let uniform () = torch.rand ([| n64 |], dtype = f64, generator = generator)
        let normal (shape: int64[]) = torch.randn (shape, dtype = f64, generator = generator)
        // Tensor operators with a double or two tensors create Scalars TorchSharp does not keep alive:
        // the arithmetic binds them (the same operations, so the same numbers).
        let ( *. ) (t: Tensor) (v: float) = Tensors.mulScalar t v
        let (+.) (t: Tensor) (v: float) = Tensors.addScalar t v
        let (++) (a: Tensor) (b: Tensor) = Tensors.add a b
        let (--) (a: Tensor) (b: Tensor) = Tensors.sub a b
        let points =
            match dataset with
            | ToyDataset.Ring ->
                let k = torch.randint(0L, 8L, [| n64 |], dtype = torch.int64, generator = generator).to_type(f64)
                let angle = k *. (Math.PI / 4.0)
                let centres = torch.stack ([| angle.cos (); angle.sin () |], 1L) *. Math.Sqrt 2.0
                centres ++ (normal [| n64; 2L |] *. 0.1)
            | ToyDataset.Moons ->
                let upper = torch.randint(0L, 2L, [| n64 |], dtype = torch.int64, generator = generator).to_type(f64)
                let theta = uniform () *. Math.PI
                // upper moon (cos, sin); lower moon (1 - cos, 1/2 - sin); then centred and scaled
                let x = (upper * theta.cos ()) ++ ((upper.neg () +. 1.0) * (theta.cos().neg() +. 1.0))
                let y = (upper * theta.sin ()) ++ ((upper.neg () +. 1.0) * (theta.sin().neg() +. 0.5))
                let p = torch.stack ([| x +. -0.5; y +. -0.25 |], 1L) ++ (normal [| n64; 2L |] *. 0.05)
                p *. 1.2
            | ToyDataset.SwissRoll ->
                let angle = ((uniform () *. 2.0) +. 1.0) *. (1.5 * Math.PI)
                let p = Tensors.divScalar (torch.stack ([| angle * angle.cos (); angle * angle.sin () |], 1L)) 7.0
                p ++ (normal [| n64; 2L |] *. 0.05)
            | ToyDataset.Checkerboard ->
                // column u in [-2, 2); row v in [0, 1) shifted to one of two dark squares in that column
                let u = (uniform () *. 4.0) +. -2.0
                let pick = torch.randint(0L, 2L, [| n64 |], dtype = torch.int64, generator = generator).to_type(f64)
                use two = Tensors.scalar 2.0
                let v = (uniform () -- (pick *. 2.0)) ++ torch.remainder (u.floor (), two)
                torch.stack ([| u; v |], 1L) *. 0.75
        points.to_type(dtype).MoveToOuterDisposeScope()

    /// The exact log-density (nats) of the ring dataset at points x [N, 2], as a float64 [N] tensor:
    /// log of the equal-weight mixture of its 8 Gaussians. None for the other datasets (their
    /// densities have no closed form).
    let tryLogDensity (dataset: ToyDataset) (x: Tensor) : Tensor option =
        match dataset with
        | ToyDataset.Ring ->
            Check.floating "x" x
            if x.dim () <> 2L || x.shape.[1] <> 2L then
                Check.fail "x" x.shape "an [N, 2] tensor"
            use scope = torch.NewDisposeScope()
            let angles = Array.init 8 (fun k -> float k * Math.PI / 4.0)
            let centres =
                torch
                    .tensor(
                        angles |> Array.collect (fun a -> [| Math.Sqrt 2.0 * Math.Cos a; Math.Sqrt 2.0 * Math.Sin a |]),
                        dtype = torch.float64
                    )
                    .reshape([| 1L; 8L; 2L |])
            let var = 0.1 * 0.1
            let d2 = (Tensors.square (x.detach().cpu().to_type(torch.float64).unsqueeze(1L) - centres)).sum([| 2L |])
            let logComponents = Tensors.addScalar (Tensors.mulScalar d2 (-0.5 / var)) (-(Math.Log(2.0 * Math.PI * var)))
            Some((Tensors.addScalar (torch.logsumexp (logComponents, 1L)) (-(Math.Log 8.0))).MoveToOuterDisposeScope())
        | _ -> None

[<RequireQualifiedAccess>]
module Standardisation =
    /// The identity map in `dim` dimensions.
    let identity (dim: int) = { Shift = Array.zeroCreate dim; Scale = Array.create dim 1.0 }

    /// Per-coordinate mean and standard deviation of data [N, D] (N >= 2); a constant coordinate
    /// keeps scale 1.
    let fit (data: Tensor) : Standardisation =
        Check.floating "data" data
        if data.dim () <> 2L || data.shape.[0] < 2L then
            Check.fail "data" data.shape "a [N, D] tensor with N >= 2"
        use scope = torch.NewDisposeScope()
        let d = data.detach().cpu().to_type(torch.float64)
        let m = d.mean ([| 0L |])
        let s = d.std (0L)
        let mean = Tensors.toHost m
        let std = Tensors.toHost s |> Array.map (fun v -> if v > 0.0 && not (Double.IsNaN v) then v else 1.0)
        { Shift = mean; Scale = std }

    let private check (st: Standardisation) (x: Tensor) =
        Check.floating "x" x
        if x.dim () <> 2L || x.shape.[1] <> int64 st.Shift.Length then
            Check.fail "x" x.shape (sprintf "a [N, %d] tensor" st.Shift.Length)

    let private row (values: float[]) (x: Tensor) = torch.tensor(values, dtype = x.dtype, device = x.device).reshape([| 1L; -1L |])

    /// Data space to model space: (x - Shift) / Scale (a fresh tensor).
    let apply (st: Standardisation) (x: Tensor) : Tensor =
        check st x
        use scope = torch.NewDisposeScope()
        ((x - row st.Shift x) / row st.Scale x).MoveToOuterDisposeScope()

    /// Model space to data space: x Scale + Shift (a fresh tensor).
    let invert (st: Standardisation) (x: Tensor) : Tensor =
        check st x
        use scope = torch.NewDisposeScope()
        (Tensors.add (x * row st.Scale x) (row st.Shift x)).MoveToOuterDisposeScope()

    /// log |det| of the map from data to model space, -sum log Scale: add it to a model-space
    /// log-density to get the data-space log-density.
    let logDetJacobian (st: Standardisation) = -(st.Scale |> Array.sumBy Math.Log)
