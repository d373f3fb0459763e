namespace ScoreSde

open TorchSharp

/// How to integrate an ODE between T and a schedule's end time: a value the probability-flow sampler,
/// the encoder and the likelihood take.
[<RequireQualifiedAccess>]
type OdeMethod =
    /// A fixed-step solver on the schedule's grid.
    | FixedStep of OdeSolver
    /// Adaptive Dormand-Prince 5(4) (`AdaptiveOde`) between T and the schedule's end time; it chooses
    /// its own steps, so the schedule's grid and step count are not used.
    | Dopri5 of AdaptiveSettings

[<RequireQualifiedAccess>]
module OdeMethod =
    /// Adaptive Dormand-Prince 5(4) with the given tolerances and the default settings otherwise.
    let dopri5 (rtol: float) (atol: float) = OdeMethod.Dopri5 { AdaptiveOde.defaults with Rtol = rtol; Atol = atol }

    /// Display name.
    let name (m: OdeMethod) =
        match m with
        | OdeMethod.FixedStep s -> OdeSolver.name s
        | OdeMethod.Dopri5 a -> sprintf "Dopri5 (rtol %g, atol %g, %A)" a.Rtol a.Atol a.Control

    /// Check the method with its schedule (throws ArgumentException naming the bad setting). An
    /// adaptive method takes the schedule's end time only: an explicit grid contradicts it.
    let validate (sde: Sde) (m: OdeMethod) (schedule: Schedule) =
        match m with
        | OdeMethod.FixedStep _ -> Schedule.points sde schedule |> ignore
        | OdeMethod.Dopri5 a ->
            AdaptiveOde.validate a
            match schedule.Grid with
            | TimeGrid.Explicit _ ->
                Check.fail
                    "grid"
                    schedule.Grid
                    "a generated grid (the adaptive method chooses its own steps; an explicit grid contradicts it)"
            | _ -> Schedule.checkEps sde schedule.Eps

    /// A batch-shared-time view of a per-sample-time field (for the fixed-step solvers).
    let sharedTime (field: TimeField) : VectorField =
        fun x t ->
            use value = Tensors.scalar t // bound, so it outlives the native call (Scalars have finalizers)
            use tb = torch.full ([| x.shape.[0] |], value, dtype = x.dtype, device = x.device)
            field x tb

    /// Integrate x' = field(x, t) between T and the schedule's end: downwards (T -> end) when
    /// `downwards`, else upwards. Returns the end state (fresh; x is not modified) and the number of
    /// evaluations of the field.
    let integrate (sde: Sde) (m: OdeMethod) (schedule: Schedule) (field: TimeField) (x: Tensor) (downwards: bool) : Tensor * int =
        validate sde m schedule
        match m with
        | OdeMethod.FixedStep solver ->
            let ts = Schedule.points sde schedule
            let ts = if downwards then ts else Array.rev ts
            use _noGrad = torch.no_grad ()
            OdeSolver.integrate solver (sharedTime field) x ts
        | OdeMethod.Dopri5 settings ->
            let t0, t1 = if downwards then sde.T, schedule.Eps else schedule.Eps, sde.T
            let r = AdaptiveOde.integrate settings field x t0 t1
            r.State, r.Nfe
