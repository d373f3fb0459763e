namespace ScoreSde

open System
open TorchSharp

/// Samples and the number of model evaluations it took to make them.
type SampleResult =
    { Samples: Tensor
      Nfe: int }

/// Called after every step with the step index (0-based), the time reached and the current state.
/// The state is the sampler's working buffer: read it (or clone it), never modify or keep it.
type Observer = int -> float -> Tensor -> unit

/// Settings of the predictor-corrector sampler.
type PcSettings =
    { Predictor: Predictor
      Corrector: Corrector
      /// Time grid; `Steps` predictor steps go from T down to `Eps`.
      Grid: TimeGrid
      Steps: int
      Eps: float
      /// Return the mean of the last update (no noise in the final step), as the paper does.
      Denoise: bool
      Observer: Observer option }

/// Settings of the fixed-step probability-flow ODE sampler.
type OdeSettings =
    { Solver: OdeSolver
      Grid: TimeGrid
      Steps: int
      Eps: float
      /// Finish with Tweedie's denoising step x_0 = (x + sigma_eps^2 s(x, eps)) / alpha_eps (one more
      /// model evaluation).
      Denoise: bool
      Observer: Observer option }

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
        if xT.dim() < 1L || xT.shape.[0] < 1L then Check.fail "xT" xT.shape "a tensor with a batch dimension"

    /// The predictor-corrector sampler (Song et al. 2021, Alg. 1) from the starting state xT (not
    /// modified). At each grid time t_i the corrector runs first, then the predictor steps to t_{i+1};
    /// the step size is the grid spacing. Runs without gradients.
    let predictorCorrector (sde: VpSde) (model: Model) (settings: PcSettings) (noise: Noise) (xT: Tensor) : SampleResult =
        Native.ensureLoaded ()
        checkStart xT
        Corrector.validate settings.Corrector
        let ts = TimeGrid.points sde settings.Grid settings.Steps settings.Eps
        let n = ts.Length - 1
        use _noGrad = torch.no_grad()
        let x = xT.clone()
        use z = torch.empty_like(x)
        use tb = torch.empty([| x.shape.[0] |], dtype = x.dtype, device = x.device)
        // Working memory for the corrector's score with data-prediction models, made on first use.
        let scratch = lazy (torch.empty_like(x))
        use _scratch = { new IDisposable with member _.Dispose() = if scratch.IsValueCreated then scratch.Value.Dispose() }
        let mutable nfe = 0
        let predictorEvaluates = Predictor.evaluatesModel settings.Predictor
        for i in 0 .. n - 1 do
            let t, s = ts.[i], ts.[i + 1]
            tb.fill_(t) |> ignore
            let last = i = n - 1
            let alphaI = Corrector.stepAlpha sde t s
            nfe <- nfe + Corrector.correctWith sde settings.Corrector model x tb z scratch noise t alphaI
                            (last && settings.Denoise && not predictorEvaluates)
            nfe <- nfe + Predictor.stepInPlace sde settings.Predictor model x tb z noise t s
                            (not (last && settings.Denoise))
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

    /// Sample by integrating the probability-flow ODE from T down to eps with a fixed-step solver,
    /// starting at xT (not modified). Runs without gradients.
    let probabilityFlow (sde: VpSde) (model: Model) (settings: OdeSettings) (xT: Tensor) : SampleResult =
        Native.ensureLoaded ()
        checkStart xT
        let ts = TimeGrid.points sde settings.Grid settings.Steps settings.Eps
        use _noGrad = torch.no_grad()
        let field = probabilityFlowField sde model
        let mutable x = xT.clone()
        for i in 0 .. ts.Length - 2 do
            let next = OdeSolver.step settings.Solver field x ts.[i] ts.[i + 1]
            x.Dispose()
            x <- next
            settings.Observer |> Option.iter (fun f -> f i ts.[i + 1] x)
        let mutable nfe = (ts.Length - 1) * OdeSolver.evaluationsPerStep settings.Solver
        if settings.Denoise then
            let d = denoise sde model x ts.[ts.Length - 1]
            x.Dispose()
            x <- d
            nfe <- nfe + 1
        { Samples = x; Nfe = nfe }
