namespace ScoreSde

open System

/// How a sampler places its time points between T and eps.
[<RequireQualifiedAccess>]
type TimeGrid =
    /// Uniform in t.
    | Uniform
    /// Uniform in sqrt(t), i.e. t quadratic in the step index (denser near eps).
    | Quadratic
    /// Uniform in the half log-SNR lambda_t (the DPM-Solver "logSNR" grid).
    | LogSnr
    /// A caller-given list of times, strictly decreasing, each in (0, T]. The step count and eps are
    /// taken from the list.
    | Explicit of float[]

/// Where a run's time points lie: `Steps` intervals of `Grid` from T down to `Eps` (an explicit grid
/// gives its own points, step count and end time). Every sampler, the encoder and the likelihood take
/// one (the adaptive solvers use only its end time).
type Schedule = { Grid: TimeGrid; Steps: int; Eps: float }

[<RequireQualifiedAccess>]
module TimeGrid =
    /// Validate an explicit grid: at least two points, finite, strictly decreasing, within (0, T].
    let validate (sde: Sde) (points: float[]) =
        Check.notNull "grid" points
        if points.Length < 2 then
            Check.fail "grid" points "at least two time points (one step)"
        points
        |> Array.iteri (fun i p ->
            if Double.IsNaN p || p <= 0.0 || p > sde.T then
                Check.fail (sprintf "grid[%d]" i) p (sprintf "in (0, %g]" sde.T))
        for i in 1 .. points.Length - 1 do
            if not (points.[i] < points.[i - 1]) then
                Check.fail
                    (sprintf "grid[%d]" i)
                    points.[i]
                    (sprintf "below grid[%d] = %g (times must strictly decrease)" (i - 1) points.[i - 1])

    /// The N + 1 time points t_0 = T > t_1 > ... > t_N = eps of an N-step grid.
    let points (sde: Sde) (grid: TimeGrid) (steps: int) (eps: float) : float[] =
        match grid with
        | TimeGrid.Explicit ts ->
            validate sde ts
            Array.copy ts
        | _ ->
            Check.positiveInt "steps" steps
            Check.finite "eps" eps
            if eps <= 0.0 || eps >= sde.T then
                Check.fail "eps" eps (sprintf "in (0, %g)" sde.T)
            let n = float steps
            let ts =
                match grid with
                | TimeGrid.Uniform -> Array.init (steps + 1) (fun i -> sde.T + (eps - sde.T) * float i / n)
                | TimeGrid.Quadratic ->
                    let a, b = Math.Sqrt sde.T, Math.Sqrt eps
                    Array.init (steps + 1) (fun i -> let r = a + (b - a) * float i / n in r * r)
                | TimeGrid.LogSnr ->
                    let l0, l1 = Sde.lambdaAt sde sde.T, Sde.lambdaAt sde eps
                    Array.init (steps + 1) (fun i -> Sde.timeOfLambda sde (l0 + (l1 - l0) * float i / n))
                | TimeGrid.Explicit _ -> failwith "unreachable"
            // Pin the end points exactly (the lambda round trip is exact only to rounding).
            ts.[0] <- sde.T
            ts.[steps] <- eps
            ts

[<RequireQualifiedAccess>]
module Schedule =
    /// `steps` intervals of `grid` down to `eps`.
    let create (grid: TimeGrid) (steps: int) (eps: float) = { Grid = grid; Steps = steps; Eps = eps }

    /// `steps` intervals uniform in t down to `eps`.
    let uniform (steps: int) (eps: float) = create TimeGrid.Uniform steps eps

    /// An explicit grid: the given strictly decreasing times (checked where the schedule is used).
    let ofTimes (times: float[]) =
        let n = if isNull times then 0 else times.Length
        create (TimeGrid.Explicit times) (max 0 (n - 1)) (if n > 0 then times.[n - 1] else nan)

    /// The N + 1 time points from T down to the end time.
    let points (sde: Sde) (schedule: Schedule) : float[] = TimeGrid.points sde schedule.Grid schedule.Steps schedule.Eps

    /// Check an end time: finite and in (0, T).
    let checkEps (sde: Sde) (eps: float) =
        Check.finite "eps" eps
        if eps <= 0.0 || eps >= sde.T then
            Check.fail "eps" eps (sprintf "in (0, %g)" sde.T)

    /// The time the run ends at: the last point of an explicit grid, else `Eps` (checked).
    let endTime (sde: Sde) (schedule: Schedule) =
        match schedule.Grid with
        | TimeGrid.Explicit ts ->
            TimeGrid.validate sde ts
            ts.[ts.Length - 1]
        | _ ->
            checkEps sde schedule.Eps
            schedule.Eps
