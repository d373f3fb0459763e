namespace ScoreSde.Cli

open System
open System.CommandLine
open System.IO
open System.Runtime.InteropServices
open TorchSharp
open ScoreSde

/// What `sample` conditions on: known values (`--inpaint`, `--mask`, `--basis`, `--replacement`) and a
/// class with classifier-free guidance (`--label`, `--guidance`, `--classes`).
type ConditionSettings =
    {
        /// .npy or .csv file of the known values (one sample's shape, or one per sample).
        Inpaint: string option
        /// .npy or .csv file, nonzero where a value is known (broadcastable to the samples).
        Mask: string option
        /// .npy or .csv file of an orthonormal C x C matrix: the values are coordinates in its basis.
        Basis: string option
        /// None: the sampler's default.
        Replacement: Replacement option
        /// The class to sample (class-conditional models).
        Label: int option
        /// The classifier-free guidance weight w (default 0: the conditional model itself).
        Guidance: float option
        /// TorchScript class-conditional models: the number of classes (the null label).
        Classes: int option
    }

[<RequireQualifiedAccess>]
module Conditioning =
    /// No condition.
    let none =
        { Inpaint = None
          Mask = None
          Basis = None
          Replacement = None
          Label = None
          Guidance = None
          Classes = None }

    /// The `--replacement` option of `sample` and `inpaint` (absent: the sampler's default).
    let replacementOption (description: string) = Opt.choice "--replacement" description [ "fresh"; "fixed" ] None

    /// The replacement an `--replacement` option names, if given.
    let replacementValue (pr: ParseResult) (o: Option<string>) =
        match pr.GetValue o with
        | null -> None
        | r when r.ToLowerInvariant() = "fresh" -> Some Replacement.Fresh
        | _ -> Some Replacement.FixedLatent

    /// A data file as a float tensor of its own shape (.npy of any shape, or .csv rows).
    let private read (option: string) (path: string) (dtype: torch.ScalarType) : Tensor =
        try
            DataFile.toTensor (DataFile.readArray path) dtype
        with :? ArgumentException as e ->
            raise (ArgumentException(sprintf "%s: %s" option e.Message, option))

    /// A file's tensor as [1 or count, sample shape...]: one sample's shape, one per sample, or already
    /// broadcastable ([1, ...]).
    let private asBatch (option: string) (t: Tensor) (sampleShape: int64[]) (count: int) : Tensor =
        let shape = t.shape
        let describe (s: int64[]) = "[" + String.Join(", ", s) + "]"
        if shape = sampleShape then
            t.reshape (Array.append [| 1L |] sampleShape)
        elif
            shape.Length = sampleShape.Length + 1
            && (shape.[0] = 1L || shape.[0] = int64 count)
            && shape.[1..] = sampleShape
        then
            t.alias ()
        else
            raise (
                ArgumentException(
                    sprintf
                        "%s holds an array of shape %s; it must be one sample's shape %s or %d samples (%s)."
                        option
                        (describe shape)
                        (describe sampleShape)
                        count
                        (describe (Array.append [| int64 count |] sampleShape)),
                    option
                )
            )

    /// The known values of `--inpaint` / `--mask` / `--basis` as a condition in the model's space (a
    /// standardised model gets standardised values; a basis acts there too). None without `--inpaint`.
    let condition (c: ConditionSettings) (info: ModelInfo) (count: int) : Condition option =
        match c.Inpaint, c.Mask with
        | None, Some _ -> raise (ArgumentException("--mask needs --inpaint (the known values).", "--mask"))
        | None, None ->
            if c.Basis.IsSome then
                raise (ArgumentException("--basis needs --inpaint (the known values in the basis).", "--basis"))
            if c.Replacement.IsSome then
                raise (ArgumentException("--replacement needs --inpaint.", "--replacement"))
            None
        | Some _, None -> raise (ArgumentException("--inpaint needs --mask (nonzero where a value is known).", "--inpaint"))
        | Some valuesPath, Some maskPath ->
            let values =
                use raw = read "--inpaint" valuesPath torch.float64
                use batch = asBatch "--inpaint" raw info.SampleShape count
                match info.Standardisation with
                | Some st when c.Basis.IsNone -> Standardisation.apply st batch
                | Some _ ->
                    raise (
                        ArgumentException(
                            "--basis: this model works on standardised data, where an orthonormal basis of the data is not one of the model's space; use --inpaint without --basis.",
                            "--basis"
                        )
                    )
                | None -> batch.to_type (info.Dtype)
            let mask =
                use raw = read "--mask" maskPath torch.float64
                asBatch "--mask" raw info.SampleShape count
            let basis = c.Basis |> Option.map (fun p -> read "--basis" p info.Dtype)
            Some { Values = values; Mask = mask; Basis = basis; Replacement = c.Replacement }

    /// A TorchScript file whose forward takes (x, t, labels) as a class-conditional model (t multiplied
    /// by `timeScale`; `classes` the null label), and the module that owns it.
    let loadConditionalTorchScript (path: string) (timeScale: float) (output: ModelOutput) (classes: int) : ConditionalModel * IDisposable =
        Native.ensureLoaded ()
        if not (File.Exists path) then
            raise (ArgumentException(sprintf "--model: %s is not a file; --classes applies to TorchScript models." path, "--model"))
        let m =
            try
                torch.jit.load (path)
            with
            | :? ExternalException
            | :? InvalidOperationException as e ->
                raise (
                    ArgumentException(
                        sprintf
                            "--model: %s is not a TorchScript file that TorchSharp can load (%s)"
                            path
                            ((e.Message.Split('\n').[0]).Trim()),
                        "--model"
                    )
                )
        m.eval ()
        let forward (x: Tensor) (t: Tensor) (labels: Tensor) =
            use scope = torch.NewDisposeScope()
            use s = Scalar.op_Implicit timeScale
            let ts = if timeScale = 1.0 then t else t.mul (s: Scalar)
            let out =
                try
                    m.call ([| box x; box ts; box labels |]) :?> Tensor
                with
                | :? InvalidCastException
                | :? ExternalException as e ->
                    raise (
                        InvalidOperationException(
                            sprintf
                                "the TorchScript model cannot be called as forward(x, t, labels) returning a tensor: %s"
                                ((e.Message.Split('\n').[0]).Trim())
                        )
                    )
            out.MoveToOuterDisposeScope()
        { Forward = forward; Output = output; NullLabel = int64 classes }, (m :> IDisposable)

    /// A class-conditional U-Net as a `ConditionalModel` (its time scale applied; the null label its
    /// number of classes).
    let conditionalOf (info: ModelInfo) (net: UNet) : ConditionalModel =
        if net.Config.Classes = 0 then
            raise (ArgumentException("--model: the U-Net is not class-conditional (it was trained without labels).", "--model"))
        let forward (x: Tensor) (t: Tensor) (labels: Tensor) =
            if info.TimeScale = 1.0 then
                net.Forward(x, t, labels)
            else
                use s = Scalar.op_Implicit info.TimeScale
                use ts = t.mul (s: Scalar)
                net.Forward(x, ts, labels)
        { Forward = forward; Output = info.Output; NullLabel = int64 (UNet.nullLabel net.Config) }

    /// Run f; a core ArgumentException about the condition is rethrown naming the command-line option
    /// (--inpaint for the values, --mask, --basis, --replacement).
    let namingOptions (f: unit -> 'a) : 'a =
        let optionOf (param: string) =
            match param with
            | "values" -> Some "--inpaint"
            | "mask" -> Some "--mask"
            | "basis" -> Some "--basis"
            | "replacement" -> Some "--replacement"
            | _ -> None
        try
            f ()
        with :? ArgumentException as e when (optionOf e.ParamName).IsSome ->
            let name = (optionOf e.ParamName).Value
            let suffix = sprintf " (Parameter '%s')" e.ParamName
            let message = if e.Message.EndsWith suffix then e.Message.[.. e.Message.Length - suffix.Length - 1] else e.Message
            raise (ArgumentException(sprintf "%s: %s" name message, name, e))

    /// The guided model of `--label` / `--guidance` for a class-conditional model.
    let guided (c: ConditionSettings) (cm: ConditionalModel) (classes: int) (count: int) : Model * Tensor =
        match c.Label with
        | None -> raise (ArgumentException("--classes and --guidance need --label (the class to sample).", "--label"))
        | Some k ->
            if k < 0 || k >= classes then
                raise (ArgumentException(sprintf "--label must be in 0 .. %d (the model's classes; got %d)." (classes - 1) k, "--label"))
            use label = Scalar.op_Implicit (int64 k)
            let labels = torch.full ([| int64 count |], label, dtype = torch.int64)
            Guidance.classifierFree cm labels (defaultArg c.Guidance 0.0), labels
