namespace ScoreSde

open TorchSharp

/// A vector field dx/dt = F(x, t) with the time shared by the batch. It returns a fresh tensor and
/// must not modify x.
type VectorField = Tensor -> float -> Tensor

/// Called after every step of a sampler or solver with the step index (0-based), the time reached and
/// the state. The state is the working buffer: read it (or clone it), never modify or keep it. Under the
/// adaptive solver's per-sample step control the time is the one every sample has reached (the
/// slowest sample's).
type Observer = int -> float -> Tensor -> unit

/// Fixed-step explicit Runge-Kutta solvers.
[<RequireQualifiedAccess>]
type OdeSolver =
    /// Forward Euler: order 1, one evaluation per step.
    | Euler
    /// Heun's method (explicit trapezoid): order 2, two evaluations per step.
    | Heun
    /// The classical Runge-Kutta method: order 4, four evaluations per step.
    | Rk4

[<RequireQualifiedAccess>]
module OdeSolver =
    /// Order of accuracy.
    let order (solver: OdeSolver) =
        match solver with
        | OdeSolver.Euler -> 1
        | OdeSolver.Heun -> 2
        | OdeSolver.Rk4 -> 4

    /// Vector-field evaluations per step.
    let evaluationsPerStep (solver: OdeSolver) =
        match solver with
        | OdeSolver.Euler -> 1
        | OdeSolver.Heun -> 2
        | OdeSolver.Rk4 -> 4

    /// Display name.
    let name (solver: OdeSolver) =
        match solver with
        | OdeSolver.Euler -> "Euler"
        | OdeSolver.Heun -> "Heun"
        | OdeSolver.Rk4 -> "RK4"

    /// One step from t to s (s may be above or below t) of x' = f(x, t); returns a fresh tensor.
    let step (solver: OdeSolver) (f: VectorField) (x: Tensor) (t: float) (s: float) : Tensor =
        use scope = torch.NewDisposeScope()
        let h = s - t
        // x + c k with the Scalar c kept alive for the native call
        let axpy (x: Tensor) (c: float) (k: Tensor) =
            use sc = Tensors.scalar c
            x.add (k, sc)
        let result =
            match solver with
            | OdeSolver.Euler ->
                let k1 = f x t
                axpy x h k1
            | OdeSolver.Heun ->
                let k1 = f x t
                let k2 = f (axpy x h k1) s
                axpy x (0.5 * h) (Tensors.add k1 k2)
            | OdeSolver.Rk4 ->
                let m = t + 0.5 * h
                let k1 = f x t
                let k2 = f (axpy x (0.5 * h) k1) m
                let k3 = f (axpy x (0.5 * h) k2) m
                let k4 = f (axpy x h k3) s
                let sum = axpy (axpy (Tensors.add k1 k4) 2.0 k2) 2.0 k3
                axpy x (h / 6.0) sum
        result.MoveToOuterDisposeScope()

    /// Integrate x' = f(x, t) through the time points in order (increasing or decreasing); returns
    /// the final state (a fresh tensor; x is not modified) and the number of evaluations of f.
    let integrate (solver: OdeSolver) (f: VectorField) (x: Tensor) (times: float[]) : Tensor * int =
        let mutable state = x.clone ()
        try
            for i in 0 .. times.Length - 2 do
                let next = step solver f state times.[i] times.[i + 1]
                state.Dispose()
                state <- next
            state, (times.Length - 1) * evaluationsPerStep solver
        with _ ->
            state.Dispose()
            reraise ()
