namespace ScoreSde

open System
open TorchSharp

/// Samples and the number of model evaluations it took to make them.
type SampleResult = { Samples: Tensor; Nfe: int }

/// A latent and the number of model evaluations it took to compute it.
type EncodeResult = { Latent: Tensor; Nfe: int }

/// How a sampling run finishes at its end time.
[<RequireQualifiedAccess>]
type Finish =
    /// Return the state as the last step left it.
    | NoFinish
    /// Return the mean of the last update, without its noise (the paper's PC sampler). The
    /// deterministic methods add no noise, so for them this is `NoFinish`.
    | LastMean
    /// Finish with Tweedie's denoising step x_0 = E[x_0 | x_eps] = (x + sigma^2 s(x, eps)) / alpha at
    /// the end time: one more model evaluation (DPM-Solver spends one of its `Steps` on it, as its
    /// evaluation budget is exact).
    | Tweedie

/// Where a sampling run met a non-finite value.
type NonFiniteSource =
    /// The model returned NaN or an infinity.
    | ModelOutput = 0
    /// The state became NaN or infinite after a step while the model's outputs were finite.
    | State = 1

/// A sampling run stopped at the first non-finite model output or state (see `Sampling.CheckFinite`).
/// `Step` is the index of the step under way (0 for the first; the step count for the final denoising
/// evaluation), `Time` its time: the end time of the step for a state, the model's time for an output.
type NonFiniteException(message: string, source: NonFiniteSource, step: int, time: float) =
    inherit ArithmeticException(message)
    /// The model's output or the state.
    member _.Source = source
    /// The index of the step under way.
    member _.Step = step
    /// The time of the value.
    member _.Time = time

/// What integrates the reverse-time dynamics.
[<RequireQualifiedAccess>]
type Method =
    /// The predictor-corrector sampler of the reverse-time SDE (Song et al. 2021, Alg. 1): at each grid
    /// time the corrector runs first, then the predictor steps to the next time.
    | PredictorCorrector of predictor: Predictor * corrector: Corrector
    /// The probability-flow ODE with a fixed-step or adaptive solver.
    | ProbabilityFlow of OdeMethod
    /// DPM-Solver or DPM-Solver++ (its `Steps` are the schedule's: the number of model evaluations).
    | DpmSolver of DpmSolverSettings

/// One sampling run's configuration: the method, the schedule (grid, steps, end time), how the run
/// finishes, an optional observer called after every step, an optional condition (known values,
/// e.g. inpainting; see `Condition`) and whether the run checks that its values stay finite.
type Sampling =
    {
        Method: Method
        Schedule: Schedule
        Finish: Finish
        Observer: Observer option
        Condition: Condition option
        /// Stop at the first non-finite model output or state with a `NonFiniteException` naming the
        /// step and the time (default true). Every model output and, after every step, the state are
        /// checked: one vectorised pass over each in memory for float32/float64 CPU tensors (see
        /// docs/performance.md for its measured cost); false skips the check, and a run whose values
        /// overflow then returns NaN samples. The same option is `CheckFinite` in C# and
        /// `--check-finite` on the command line.
        CheckFinite: bool
    }

[<RequireQualifiedAccess>]
module Sampling =
    /// The paper's PC sampler: reverse diffusion + Langevin (snr 0.16, 1 step), 1000 uniform steps to
    /// eps = 1e-3, returning the last step's mean.
    let pc =
        { Method = Method.PredictorCorrector(Predictor.ReverseDiffusion, Corrector.langevin 0.16 1)
          Schedule = Schedule.uniform 1000 1e-3
          Finish = Finish.LastMean
          Observer = None
          Condition = None
          CheckFinite = true }

    /// The paper's ODE sampler: the probability flow with Dormand-Prince 5(4) at rtol = atol = 1e-5 and
    /// one step size for the whole batch (`StepControl.BatchGlobal`: on the 2-D mixture benchmark of
    /// docs/ode.md it needs fewer evaluations than per-sample control for the same accuracy), to
    /// eps = 1e-3. Choose `StepControl.PerSample` when a sample's result must not depend on its
    /// batch-mates. The schedule's 100 uniform steps apply when the method is set to a fixed-step solver.
    let flow =
        { Method = Method.ProbabilityFlow(OdeMethod.Dopri5 { AdaptiveOde.defaults with Control = StepControl.BatchGlobal })
          Schedule = Schedule.uniform 100 1e-3
          Finish = Finish.NoFinish
          Observer = None
          Condition = None
          CheckFinite = true }

    /// DPM-Solver with its defaults (`DpmSolver.defaults`: DPM-Solver-3M with the published update) and
    /// 20 evaluations on the logSNR grid to eps = 1e-3.
    let dpmSolver =
        { Method = Method.DpmSolver DpmSolver.defaults
          Schedule = Schedule.create TimeGrid.LogSnr 20 1e-3
          Finish = Finish.NoFinish
          Observer = None
          Condition = None
          CheckFinite = true }

    /// What the method allows a condition to do.
    let internal stepKind (sampling: Sampling) =
        match sampling.Method with
        | Method.PredictorCorrector _ -> StepKind.Stochastic
        | Method.ProbabilityFlow(OdeMethod.FixedStep _) -> StepKind.FixedSteps
        | Method.ProbabilityFlow(OdeMethod.Dopri5 _) -> StepKind.AdaptivePerSample
        | Method.DpmSolver { Method = DpmMethod.Adaptive _ } -> StepKind.AdaptiveShared
        | Method.DpmSolver _ -> StepKind.FixedSteps

    /// Check a configuration against the SDE before any work (ArgumentException naming the setting).
    let validate (sde: Sde) (sampling: Sampling) =
        sampling.Condition |> Option.iter (Condition.validate (stepKind sampling))
        match sampling.Method with
        | Method.PredictorCorrector(_, corrector) ->
            Corrector.validate corrector
            Schedule.points sde sampling.Schedule |> ignore
        | Method.ProbabilityFlow m -> OdeMethod.validate sde m sampling.Schedule
        | Method.DpmSolver d -> DpmSolver.validate sde d sampling.Schedule (sampling.Finish = Finish.Tweedie)

/// The non-finite check of `Sampler.sample` (`Sampling.CheckFinite`).
module internal Finite =
    let private fail (source: NonFiniteSource) (step: int) (time: float) =
        let message =
            match source with
            | NonFiniteSource.ModelOutput ->
                sprintf
                    "The model produced a non-finite output (NaN or infinity) at step %d (t = %g); the run stopped there. The model is at fault, not the step size: check its weights and its inputs at this time. (Sampling.CheckFinite / options.CheckFinite / --check-finite false turns the check off.)"
                    step
                    time
            | _ ->
                sprintf
                    "The state became non-finite (NaN or infinity) at step %d (t = %g) while the model's outputs were finite; the run stopped there. The steps are too large or the settings unstable for this model: use more steps, a smaller snr, or another method. (Sampling.CheckFinite / options.CheckFinite / --check-finite false turns the check off.)"
                    step
                    time
        raise (NonFiniteException(message, source, step, time))

    /// Raise at a non-finite state after step i (ending at time t).
    let checkState (i: int) (t: float) (x: Tensor) =
        if not (Tensors.allFinite x) then
            fail NonFiniteSource.State i t

    /// The model with every output checked; `step` holds the step under way.
    let checkedModel (step: int ref) (model: Model) : Model =
        let forward = model.Forward
        { model with
            Forward =
                fun x t ->
                    let out = forward x t
                    if not (isNull out) && not (Tensors.allFinite out) then
                        let ts = Tensors.readHost t
                        fail NonFiniteSource.ModelOutput step.Value (if ts.Length > 0 then ts.[0] else nan)
                    out }

/// The sampling entry point and what it is built on: each run combines an SDE, a model, a `Sampling`
/// (method, schedule, finish, observer), a noise source and a starting state.
[<RequireQualifiedAccess>]
module Sampler =
    /// A draw from the SDE's prior (N(0, I), or N(0, SigmaMax^2 I) for VE) with the given shape, dtype
    /// and device.
    let prior (sde: Sde) (shape: int64[]) (dtype: torch.ScalarType) (device: torch.Device) (noise: Noise) : Tensor =
        Native.ensureLoaded ()
        Sde.validate sde
        Sde.priorSample sde shape dtype device noise

    /// Tweedie's denoising step at time t: E[x_0 | x_t] = (x + sigma_t^2 s(x, t)) / alpha_t (fresh).
    let denoise (sde: Sde) (model: Model) (x: Tensor) (t: float) : Tensor =
        use tb = Tensors.fullTime x.shape.[0] t x.dtype x.device
        Model.dataOf sde model x tb

    let private checkState (name: string) (x: Tensor) =
        Check.floating name x
        if x.dim () < 1L || x.shape.[0] < 1L then
            Check.fail name x.shape "a tensor with a batch dimension"

    /// A starting state made from a latent (not modified): a copy in the given dtype and device.
    let latentAs (latent: Tensor) (dtype: torch.ScalarType) (device: torch.Device) : Tensor =
        checkState "xT" latent
        Check.notNull "device" device
        use detached = latent.detach ()
        detached.``to`` (dtype, device, copy = true)

    /// The predictor-corrector loop in place on x; `lastMean` leaves the last update without its noise.
    /// `afterCorrector t x` runs after the corrector's updates at time t, `afterStep` after each step.
    let private predictorCorrector
        sde
        model
        predictor
        corrector
        (ts: float[])
        lastMean
        noise
        (afterCorrector: float -> Tensor -> unit)
        (afterStep: Observer)
        (x: Tensor)
        =
        let n = ts.Length - 1
        use z = torch.empty_like (x)
        use tb = torch.empty ([| x.shape.[0] |], dtype = x.dtype, device = x.device)
        // Working memory for the corrector's score with data-prediction models, made on first use.
        let scratch = lazy (torch.empty_like (x))
        try
            let mutable nfe = 0
            let predictorEvaluates = Predictor.evaluatesModel predictor
            for i in 0 .. n - 1 do
                let t, s = ts.[i], ts.[i + 1]
                Tensors.fillHost tb t
                let last = i = n - 1
                let alphaI = Corrector.stepAlpha sde t s
                let correctorMean = last && lastMean && not predictorEvaluates
                let corrections = Corrector.correctWith sde corrector model x tb z scratch noise t alphaI correctorMean
                if corrections > 0 then
                    afterCorrector t x
                nfe <- nfe + corrections
                nfe <- nfe + Predictor.stepInPlace sde predictor model x tb z noise t s (not (last && lastMean))
                afterStep i s x
            nfe
        finally
            if scratch.IsValueCreated then
                scratch.Value.Dispose()

    /// Run a method in place on x, the run's working copy; returns the evaluations.
    let private run (sde: Sde) (model: Model) (sampling: Sampling) (noise: Noise) afterCorrector (afterStep: Observer) (x: Tensor) =
        match sampling.Method with
        | Method.PredictorCorrector(p, c) ->
            let ts = Schedule.points sde sampling.Schedule
            predictorCorrector sde model p c ts (sampling.Finish = Finish.LastMean) noise afterCorrector afterStep x
        | Method.ProbabilityFlow(OdeMethod.FixedStep solver) ->
            ProbabilityFlow.integrateInPlace sde model solver (Schedule.points sde sampling.Schedule) x afterStep
        | Method.ProbabilityFlow(OdeMethod.Dopri5 a) ->
            let observe =
                match a.Observer with
                | Some own ->
                    fun i t x ->
                        (own i t x
                         afterStep i t x)
                | None -> afterStep
            let r =
                AdaptiveOde.integrateInPlace
                    { a with Observer = Some observe }
                    (ProbabilityFlow.fieldInto sde model)
                    x
                    sde.T
                    sampling.Schedule.Eps
            r.Nfe
        // validated with the rest of the sampling by `Sampling.validate` in `sample`
        | Method.DpmSolver d -> DpmRunner.runValidated sde model d sampling.Schedule (sampling.Finish = Finish.Tweedie) afterStep x

    /// Sample from the starting state xT (not modified; e.g. `prior`, or a latent from `encode`) with
    /// the configured method, schedule and finish; `noise` drives the stochastic steps (unused by the
    /// deterministic methods) and a condition's draws. Runs without gradients on one working copy of xT,
    /// which becomes the result. After every step the run calls its per-step hook: the condition's
    /// replacement of the known part, when there is a condition (the PC sampler also replaces after its
    /// corrector), then the observer, when one is given. With a condition the known part of the result
    /// is exactly the known values.
    let sample (sde: Sde) (model: Model) (sampling: Sampling) (noise: Noise) (xT: Tensor) : SampleResult =
        Native.ensureLoaded ()
        Sde.validate sde
        checkState "xT" xT
        Sampling.validate sde sampling
        sampling.Condition |> Option.iter (fun c -> Condition.checkShapes c xT)
        use _noGrad = torch.no_grad ()
        let mutable x =
            use detached = xT.detach ()
            detached.clone ()
        try
            // The step under way, for the non-finite check's messages.
            let step = ref 0
            let model = if sampling.CheckFinite then Finite.checkedModel step model else model
            use condition = ConditionRun.Start(sde, Sampling.stepKind sampling, sampling.Condition, model, noise, x)
            let model = condition.Model
            // The one place every method reports a finished step to.
            let afterStep: Observer =
                match sampling.Observer, sampling.CheckFinite with
                | Some observe, true ->
                    fun i t x ->
                        Finite.checkState i t x
                        step.Value <- i + 1
                        condition.AfterUpdate t x
                        observe i t x
                | Some observe, false ->
                    fun i t x ->
                        condition.AfterUpdate t x
                        observe i t x
                | None, true ->
                    fun i t x ->
                        Finite.checkState i t x
                        step.Value <- i + 1
                        condition.AfterUpdate t x
                | None, false -> fun _ t x -> condition.AfterUpdate t x
            condition.Start x
            let mutable nfe = run sde model sampling noise condition.AfterUpdate afterStep x
            match sampling.Finish, sampling.Method with
            | Finish.Tweedie, Method.PredictorCorrector _
            | Finish.Tweedie, Method.ProbabilityFlow _ ->
                let d = denoise sde model x (Schedule.endTime sde sampling.Schedule)
                x.Dispose()
                x <- d
                nfe <- nfe + 1
            | _ -> ()
            condition.Finish x
            { Samples = x; Nfe = nfe }
        with _ ->
            x.Dispose()
            reraise ()

    /// Encode: integrate the probability-flow ODE from the schedule's end time up to T starting at data
    /// x0 (not modified). `sample` with `Method.ProbabilityFlow` of the same method and schedule inverts
    /// it to within the solver's accuracy. Runs without gradients.
    let encode (sde: Sde) (model: Model) (ode: OdeMethod) (schedule: Schedule) (x0: Tensor) : EncodeResult =
        Native.ensureLoaded ()
        Sde.validate sde
        checkState "x0" x0
        OdeMethod.validate sde ode schedule
        use _noGrad = torch.no_grad ()
        let z =
            use detached = x0.detach ()
            detached.clone ()
        try
            let nfe =
                match ode with
                | OdeMethod.FixedStep solver ->
                    let up = Array.rev (Schedule.points sde schedule)
                    ProbabilityFlow.integrateInPlace sde model solver up z (fun _ _ _ -> ())
                | OdeMethod.Dopri5 a -> (AdaptiveOde.integrateInPlace a (ProbabilityFlow.fieldInto sde model) z schedule.Eps sde.T).Nfe
            { Latent = z; Nfe = nfe }
        with _ ->
            z.Dispose()
            reraise ()
