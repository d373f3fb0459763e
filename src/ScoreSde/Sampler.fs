namespace ScoreSde

open System
open TorchSharp

/// Samples and the number of model evaluations it took to make them.
type SampleResult = { Samples: Tensor; Nfe: int }

/// Called after every step with the step index (0-based), the time reached and the current state.
/// The state is the sampler's working buffer: read it (or clone it), never modify or keep it.
type Observer = int -> float -> Tensor -> unit

/// Settings of the predictor-corrector sampler.
type PcSettings =
    {
        Predictor: Predictor
        Corrector: Corrector
        /// Time grid; `Steps` predictor steps go from T down to `Eps`.
        Grid: TimeGrid
        Steps: int
        Eps: float
        /// Return the mean of the last update (no noise in the final step), as the paper does.
        Denoise: bool
        Observer: Observer option
    }

/// Settings of the fixed-step probability-flow ODE sampler.
type OdeSettings =
    {
        Solver: OdeSolver
        Grid: TimeGrid
        Steps: int
        Eps: float
        /// Finish with Tweedie's denoising step x_0 = (x + sigma_eps^2 s(x, eps)) / alpha_eps (one more
        /// model evaluation).
        Denoise: bool
        Observer: Observer option
    }

/// Sampling entry points: each combines an SDE, a model, a method and a noise source.
[<RequireQualifiedAccess>]
module Sampler =
    /// The paper's PC sampler defaults: reverse diffusion + Langevin (snr 0.16, 1 step), 1000 uniform
    /// steps to eps = 1e-3, denoised.
    let pcDefaults =
        { Predictor = Predictor.ReverseDiffusion
          Corrector = Corrector.langevin 0.16 1
          Grid = TimeGrid.Uniform
          Steps = 1000
          Eps = 1e-3
          Denoise = true
          Observer = None }

    /// Probability-flow ODE defaults: RK4 on 100 uniform steps to eps = 1e-3, no denoising.
    let odeDefaults =
        { Solver = OdeSolver.Rk4
          Grid = TimeGrid.Uniform
          Steps = 100
          Eps = 1e-3
          Denoise = false
          Observer = None }

    /// A draw from the prior N(0, I) with the given shape, dtype and device.
    let prior (shape: int64[]) (dtype: torch.ScalarType) (device: torch.Device) (noise: Noise) : Tensor =
        Native.ensureLoaded ()
        Check.shape "shape" shape
        if not (dtype = torch.float32 || dtype = torch.float64 || dtype = torch.float16 || dtype = torch.bfloat16) then
            Check.fail "dtype" dtype "a floating-point dtype"
        Noise.draw noise shape dtype device

    let private checkStart (xT: Tensor) =
        Check.floating "xT" xT
        if xT.dim () < 1L || xT.shape.[0] < 1L then
            Check.fail "xT" xT.shape "a tensor with a batch dimension"

    /// The predictor-corrector sampler (Song et al. 2021, Alg. 1) from the starting state xT (not
    /// modified). At each grid time t_i the corrector runs first, then the predictor steps to t_{i+1};
    /// the step size is the grid spacing. Runs without gradients.
    let predictorCorrector (sde: VpSde) (model: Model) (settings: PcSettings) (noise: Noise) (xT: Tensor) : SampleResult =
        Native.ensureLoaded ()
        checkStart xT
        Corrector.validate settings.Corrector
        let ts = TimeGrid.points sde settings.Grid settings.Steps settings.Eps
        let n = ts.Length - 1
        use _noGrad = torch.no_grad ()
        let x = xT.clone ()
        use z = torch.empty_like (x)
        use tb = torch.empty ([| x.shape.[0] |], dtype = x.dtype, device = x.device)
        // Working memory for the corrector's score with data-prediction models, made on first use.
        let scratch = lazy (torch.empty_like (x))
        use _scratch =
            { new IDisposable with
                member _.Dispose() =
                    if scratch.IsValueCreated then
                        scratch.Value.Dispose() }
        let mutable nfe = 0
        let predictorEvaluates = Predictor.evaluatesModel settings.Predictor
        for i in 0 .. n - 1 do
            let t, s = ts.[i], ts.[i + 1]
            Tensors.fillHost tb t
            let last = i = n - 1
            let alphaI = Corrector.stepAlpha sde t s
            nfe <-
                nfe
                + Corrector.correctWith
                    sde
                    settings.Corrector
                    model
                    x
                    tb
                    z
                    scratch
                    noise
                    t
                    alphaI
                    (last && settings.Denoise && not predictorEvaluates)
            nfe <-
                nfe
                + Predictor.stepInPlace sde settings.Predictor model x tb z noise t s (not (last && settings.Denoise))
            settings.Observer |> Option.iter (fun f -> f i s x)
        { Samples = x; Nfe = nfe }

    /// The probability-flow vector field dx/dt = -1/2 beta(t) (x + s(x, t)) of a model, evaluated
    /// with a batch-shared time.
    let probabilityFlowField (sde: VpSde) (model: Model) : VectorField =
        fun (x: Tensor) (t: float) ->
            use scope = torch.NewDisposeScope()
            let tb = Tensors.fullTime x.shape.[0] t x.dtype x.device
            let out = Model.eval model x tb
            let ka, kb = Model.scoreCoefficientsAt sde model.Output t
            let hb = -0.5 * VpSde.betaAt sde t
            // -1/2 beta (x + ka x + kb out)
            let r = x * (hb * (1.0 + ka)) + out * (hb * kb)
            r.MoveToOuterDisposeScope()

    /// Tweedie's denoising step at time t: E[x_0 | x_t] = (x + sigma_t^2 s(x, t)) / alpha_t.
    let denoise (sde: VpSde) (model: Model) (x: Tensor) (t: float) : Tensor =
        use scope = torch.NewDisposeScope()
        let tb = Tensors.fullTime x.shape.[0] t x.dtype x.device
        (Model.dataOf sde model x tb).MoveToOuterDisposeScope()

    /// One fixed step from t to s of the probability-flow ODE, in place on x. The field is linear in the
    /// model output, F(x, t) = p x + q out(x, t) with host scalars p = -1/2 beta(t) (1 + ka) and
    /// q = -1/2 beta(t) kb (score = ka x + kb out), so every stage is a few in-place updates: Euler
    /// updates x alone, Heun also uses the stage buffer y, RK4 y and the accumulator acc (both shaped
    /// like x; unused ones may be null). `evaluate state t update` evaluates the model at (state, t)
    /// and passes its output to `update`. Safe for an output that is the state itself.
    let internal flowStepInPlace
        (sde: VpSde)
        (output: ModelOutput)
        (solver: OdeSolver)
        (x: Tensor)
        (y: Tensor)
        (acc: Tensor)
        (t: float)
        (s: float)
        (evaluate: Tensor -> float -> (Tensor -> unit) -> unit)
        =
        let coefficients (t: float) =
            let ka, kb = Model.scoreCoefficientsAt sde output t
            let hb = -0.5 * VpSde.betaAt sde t
            hb * (1.0 + ka), hb * kb
        // y <- x + c (p y + q out), with out possibly y itself (axpby is alias-safe).
        let stage (c: float) (p: float) (q: float) (out: Tensor) =
            if not (Fused.tryLinear y (c * p) y (c * q) out 1.0 x) then
                Kernel.axpby y (c * p) out (c * q)
                y.add_ (x) |> ignore
        let h = s - t
        match solver with
        | OdeSolver.Euler ->
            let p, q = coefficients t
            evaluate x t (fun out -> Kernel.axpby x (1.0 + h * p) out (h * q))
        | OdeSolver.Heun ->
            let p1, q1 = coefficients t
            y.copy_ (x) |> ignore
            evaluate x t (fun out -> Kernel.axpby y (1.0 + h * p1) out (h * q1))
            // x + h/2 (k1 + k2) with k1 = (y - x) / h: 0.5 x + (0.5 + h p2 / 2) y + (h q2 / 2) out2
            let p2, q2 = coefficients s
            evaluate y s (fun out -> Kernel.addTwo x 0.5 y (0.5 + 0.5 * h * p2) out (0.5 * h * q2))
        | OdeSolver.Rk4 ->
            let m = t + 0.5 * h
            let p1, q1 = coefficients t
            let pm, qm = coefficients m
            let p4, q4 = coefficients s
            // acc = k1; y = x + h/2 k1
            evaluate x t (fun out ->
                acc.copy_ (x) |> ignore
                Kernel.axpby acc p1 out q1)
            y.copy_ (x) |> ignore
            Kernel.addScaled y acc (0.5 * h)
            // acc += 2 k2; y = x + h/2 k2
            evaluate y m (fun out ->
                Kernel.addTwo acc 1.0 y (2.0 * pm) out (2.0 * qm)
                stage (0.5 * h) pm qm out)
            // acc += 2 k3; y = x + h k3
            evaluate y m (fun out ->
                Kernel.addTwo acc 1.0 y (2.0 * pm) out (2.0 * qm)
                stage h pm qm out)
            // acc += k4; x += h/6 acc
            evaluate y s (fun out -> Kernel.addTwo acc 1.0 y p4 out q4)
            Kernel.addScaled x acc (h / 6.0)

    /// Integrate the probability-flow ODE of a model through the time points (decreasing to sample,
    /// increasing to encode) with a fixed-step solver, in place on x (the caller's working buffer):
    /// `flowStepInPlace` per step, with the time buffer and the stage buffers allocated once, so
    /// nothing beyond the model's own tensors is created per step. `observe i t` runs after step i, at
    /// time t. Returns the number of model evaluations.
    let internal flowInPlace
        (sde: VpSde)
        (model: Model)
        (solver: OdeSolver)
        (times: float[])
        (x: Tensor)
        (observe: int -> float -> unit)
        : int =
        use tb = torch.empty ([| x.shape.[0] |], dtype = x.dtype, device = x.device)
        use y = if solver = OdeSolver.Euler then null else torch.empty_like (x)
        use acc = if solver = OdeSolver.Rk4 then torch.empty_like (x) else null
        // What the model created during a call is disposed with the scope.
        let evaluate (state: Tensor) (t: float) (update: Tensor -> unit) =
            Tensors.fillHost tb t
            use scope = torch.NewDisposeScope()
            update (Model.eval model state tb)
        for i in 0 .. times.Length - 2 do
            flowStepInPlace sde model.Output solver x y acc times.[i] times.[i + 1] evaluate
            observe i times.[i + 1]
        (times.Length - 1) * OdeSolver.evaluationsPerStep solver

    /// Sample by integrating the probability-flow ODE from T down to eps with a fixed-step solver,
    /// starting at xT (not modified). Runs without gradients, in place on one working copy of xT
    /// (`flowInPlace`).
    let probabilityFlow (sde: VpSde) (model: Model) (settings: OdeSettings) (xT: Tensor) : SampleResult =
        Native.ensureLoaded ()
        checkStart xT
        let ts = TimeGrid.points sde settings.Grid settings.Steps settings.Eps
        use _noGrad = torch.no_grad ()
        let mutable x = xT.clone ()
        let mutable nfe =
            flowInPlace sde model settings.Solver ts x (fun i s -> settings.Observer |> Option.iter (fun f -> f i s x))
        if settings.Denoise then
            let d = denoise sde model x ts.[ts.Length - 1]
            x.Dispose()
            x <- d
            nfe <- nfe + 1
        { Samples = x; Nfe = nfe }
