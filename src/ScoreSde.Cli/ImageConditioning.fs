/// `scoresde inpaint`: fill in a hidden part of dataset images (Fashion-MNIST's test images by default)
/// with an image model and a sampler, and write a grid of masked inputs, samples and originals. Also the
/// pieces image commands share: loading a U-Net model directory and writing image grids.
module ScoreSde.Cli.ImageConditioning

open System
open System.CommandLine
open System.IO
open TorchSharp
open SkiaSharp
open ScoreSde

let private inv (v: float) (format: string) = v.ToString(format, Globalization.CultureInfo.InvariantCulture)

/// A U-Net model directory: the loaded model (its owner), the network and its pixel range. Anything
/// else is refused naming `--model`.
let loadUNet (path: string) : LoadedModel * UNet * PixelRange =
    if not (Directory.Exists path) then
        raise (
            ArgumentException(sprintf "--model: '%s' is not a model directory (written by 'scoresde train --net unet')." path, "--model")
        )
    let loaded = ModelFile.loadNative path
    match loaded.Network, loaded.Info.Pixels with
    | (:? UNet as net), Some pixels -> loaded, net, pixels
    | _ ->
        (loaded :> IDisposable).Dispose()
        raise (
            ArgumentException(
                sprintf "--model: '%s' holds %s, not an image U-Net with a pixel range." path loaded.Info.Description,
                "--model"
            )
        )

/// Image grids: rows of images as PNG cells, `scale` screen pixels per image pixel, 2-pixel white gaps.
[<RequireQualifiedAccess>]
module Grid =
    /// The gap between cells, in screen pixels.
    let gap = 2

    /// Colour of a hidden (unknown) pixel in a masked input.
    let hidden = SKColor(70uy, 110uy, 170uy)

    /// One row: uint8 levels [n, C, H, W] and, optionally, a mask broadcastable to them (nonzero where
    /// known; pixels unknown in any channel are drawn in `hidden`).
    type Row = { Levels: Tensor; Known: Tensor option }

    /// The size in screen pixels of a grid of `rows` x `columns` images of H x W.
    let size (rows: int) (columns: int) (height: int) (width: int) (scale: int) =
        columns * width * scale + (columns + 1) * gap, rows * height * scale + (rows + 1) * gap

    /// Write rows of images (each row as many images as the longest; shorter rows end early) to a PNG.
    /// One channel is drawn grey, three as RGB, others by their first channel.
    let write (path: string) (scale: int) (rows: Row list) =
        if rows.IsEmpty then
            invalidArg "rows" "a grid needs at least one row"
        let shape = rows.Head.Levels.shape
        let c, h, w = int shape.[1], int shape.[2], int shape.[3]
        let columns = rows |> List.map (fun r -> int r.Levels.shape.[0]) |> List.max
        let width, height = size rows.Length columns h w scale
        use bitmap = new SKBitmap(width, height)
        bitmap.Erase(SKColors.White)
        rows
        |> List.iteri (fun ri row ->
            use levels = row.Levels.contiguous ()
            let n = int levels.shape.[0]
            let v = levels.data<byte>().ToArray()
            let known =
                row.Known
                |> Option.map (fun k ->
                    use zero = Scalar.op_Implicit 0.0
                    use nonzero = k.ne (zero: Scalar)
                    use all = nonzero.all (1L, true)
                    use expanded = all.expand ([| int64 n; 1L; int64 h; int64 w |])
                    use copy = expanded.contiguous ()
                    copy.data<bool>().ToArray())
            for i in 0 .. n - 1 do
                for y in 0 .. h - 1 do
                    for x in 0 .. w - 1 do
                        let at ch = v.[((i * c + ch) * h + y) * w + x]
                        let colour =
                            match known with
                            | Some k when not k.[(i * h + y) * w + x] -> hidden
                            | _ when c = 3 -> SKColor(at 0, at 1, at 2)
                            | _ -> SKColor(at 0, at 0, at 0)
                        let left = gap + i * (w * scale + gap) + x * scale
                        let top = gap + ri * (h * scale + gap) + y * scale
                        for dy in 0 .. scale - 1 do
                            for dx in 0 .. scale - 1 do
                                bitmap.SetPixel(left + dx, top + dy, colour))
        let dir = Path.GetDirectoryName(Path.GetFullPath path)
        Directory.CreateDirectory dir |> ignore
        use image = SKImage.FromBitmap bitmap
        use data = image.Encode(SKEncodedImageFormat.Png, 100)
        let temp = path + ".tmp"
        (use file = File.Create temp
         data.SaveTo file)
        File.Move(temp, path, true)

/// The `--data-dir` option of the image commands (default: Debian's Fashion-MNIST directory).
let dataDirOption (description: string) = Opt.text "--data-dir" description (Some FashionMnist.defaultDirectory)

/// The named masks `inpaint` offers: the half that is hidden.
let maskNames = [ "right-half"; "left-half"; "bottom-half"; "top-half" ]

/// The mask [1, C, H, W] (1 where known) of a name in `maskNames` or of a .npy/.csv file (nonzero where
/// known; [H, W], [C, H, W] or [1, C, H, W]).
let mask (text: string) (sampleShape: int64[]) (dtype: torch.ScalarType) : Tensor =
    let c, h, w = sampleShape.[0], sampleShape.[1], sampleShape.[2]
    let halves (hideRows: bool) (hideFirst: bool) =
        let m = torch.ones ([| 1L; c; h; w |], dtype = dtype)
        let extent = if hideRows then h else w
        let start, length = if hideFirst then 0L, extent / 2L else extent / 2L, extent - extent / 2L
        use part = m.narrow ((if hideRows then 2L else 3L), start, length)
        part.zero_ () |> ignore
        m
    match text.ToLowerInvariant() with
    | "right-half" -> halves false false
    | "left-half" -> halves false true
    | "bottom-half" -> halves true false
    | "top-half" -> halves true true
    | _ when File.Exists text ->
        use raw =
            try
                DataFile.toTensor (DataFile.readArray text) dtype
            with :? ArgumentException as e ->
                raise (ArgumentException(sprintf "--mask: %s" e.Message, "--mask"))
        let s = raw.shape
        let fits =
            (s.Length = 2 && s = [| h; w |])
            || (s.Length = 3 && s = sampleShape)
            || (s.Length = 4 && s.[0] = 1L && s.[1..] = sampleShape)
        if not fits then
            raise (
                ArgumentException(
                    sprintf "--mask: %s holds an array of shape %A; it must be H x W, C x H x W or 1 x C x H x W (%A)." text s sampleShape,
                    "--mask"
                )
            )
        use r = raw.reshape ([| 1L; (if s.Length = 2 then 1L else c); h; w |])
        r.expand([| 1L; c; h; w |]).contiguous()
    | _ ->
        raise (
            ArgumentException(
                sprintf "--mask must be %s or an existing .npy/.csv file (got '%s')." (String.Join(", ", maskNames)) text,
                "--mask"
            )
        )

/// What `inpaint` was asked to do.
type InpaintRun =
    { ModelPath: string
      DataDir: string
      Split: Split
      First: int
      Count: int
      SamplesPerImage: int
      Mask: string
      Replacement: Replacement option
      Sampler: SamplerRun
      Seed: int64
      Scale: int
      Out: string
      Npy: string option }

/// Inpaint `Count` images of the split from `First` on; write the grid (rows: masked inputs, one row
/// per sample drawn for each image, originals) and report the known region's agreement.
let inpaint (ui: Ui) (c: InpaintRun) : int =
    if not (c.Out.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) then
        raise (ArgumentException(sprintf "--out must name a .png file (got '%s')." c.Out, "--out"))
    c.Npy
    |> Option.iter (fun p ->
        if not (p.EndsWith(".npy", StringComparison.OrdinalIgnoreCase)) then
            raise (ArgumentException(sprintf "--npy must name a .npy file (got '%s')." p, "--npy")))
    let loaded, net, pixels = loadUNet c.ModelPath
    use _loaded = loaded
    let info = loaded.Info
    use set = FashionMnist.load c.DataDir c.Split
    if set.SampleShape <> info.SampleShape then
        raise (
            ArgumentException(
                sprintf "--data-dir: the images are %A but the model takes %A." set.SampleShape info.SampleShape,
                "--data-dir"
            )
        )
    if int64 (c.First + c.Count) > set.Count then
        raise (
            ArgumentException(sprintf "--first %d with --n %d goes past the %d images of %s." c.First c.Count set.Count set.Source, "--n")
        )
    let k = c.SamplesPerImage
    // every tensor of the run below (the network's are older) is freed when the command ends
    use _scope = torch.NewDisposeScope()
    use indices = torch.arange (int64 c.First, int64 (c.First + c.Count), dtype = torch.int64)
    use originals = ImageSet.batch pixels info.Dtype indices set
    use known = mask c.Mask info.SampleShape info.Dtype
    // sample j of image i at row j, column i: the batch is the images repeated k times
    use values = originals.repeat ([| int64 k; 1L; 1L; 1L |])
    let condition = { Condition.inpaint values known with Replacement = c.Replacement }
    let model = UNet.toModel net
    Ui.info
        ui
        (sprintf
            "inpainting %d images of %s (%s hidden), %d sample(s) each, %s; model: %s"
            c.Count
            set.Source
            c.Mask
            k
            c.Sampler.Label
            info.Description)
    let sampler = { c.Sampler with Sampling = { c.Sampler.Sampling with Condition = Some condition } }
    let noise = Noise.fromSeed c.Seed torch.CPU
    use xT = Sampler.prior info.Sde values.shape info.Dtype torch.CPU noise
    let result, seconds, _ = Commands.runSampler ui sampler info.Sde model xT (c.Seed + 1L) 0L
    use samples = result.Samples
    Commands.ensureFinite (sprintf "the %s sampler's samples" c.Sampler.Name) "" samples
    // the known region in the model's space and in 8-bit levels
    use zero = Scalar.op_Implicit 0.0
    use knownAll = known.ne(zero: Scalar).expand(values.shape)
    use diff = samples.sub(values).abs()
    use knownDiff = diff.masked_select (knownAll)
    let worst = if knownDiff.numel () = 0L then 0.0 else knownDiff.max().item<float32>() |> float
    use sampleLevels = Pixels.toLevels pixels samples
    use inputLevels = Pixels.toLevels pixels values
    use levelsDiffer = sampleLevels.ne(inputLevels).logical_and(knownAll)
    let differing = levelsDiffer.sum().item<int64>()
    use unknownAll = knownAll.logical_not ()
    use originalLevels = (Pixels.toLevels pixels values).to_type(torch.float64)
    use levelDiff = sampleLevels.to_type(torch.float64).sub(originalLevels).abs()
    use unknownErr = levelDiff.masked_select (unknownAll)
    let unknownMae = if unknownErr.numel () = 0L then 0.0 else unknownErr.mean().item<float>()
    let maskedRow = Pixels.toLevels pixels originals
    use _maskedRow = maskedRow
    let rows =
        [ yield { Grid.Levels = maskedRow; Grid.Known = Some known }
          for j in 0 .. k - 1 do
              yield { Grid.Levels = sampleLevels.narrow (0L, int64 (j * c.Count), int64 c.Count); Grid.Known = None }
          yield { Grid.Levels = maskedRow; Grid.Known = None } ]
    c.Npy
    |> Option.iter (fun p ->
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath p)) |> ignore
        DataFile.save p samples)
    Grid.write c.Out c.Scale rows
    ui.Out.WriteLine(
        sprintf
            "wrote %s: %d images x %d sample(s) (%s, %d model evaluations, %s s); known region: largest difference %s in the model's range, %d of its 8-bit pixels differ; hidden region: mean absolute difference to the originals %s levels (of 255)"
            c.Out
            c.Count
            k
            c.Sampler.Label
            result.Nfe
            (inv seconds "F1")
            (inv worst "G3")
            differing
            (inv unknownMae "F1")
    )
    0

/// `inpaint`'s command-line definition; `act` wraps the body (threads, UI, error guard).
let command (act: (Ui -> int) -> ParseResult -> int) =
    let cmd =
        Command(
            "inpaint",
            "Fill in the hidden part of dataset images with an image model (PC: the paper's inpainter); writes a grid of masked inputs, samples and originals"
        )
    let model = Opt.required "--model" "A U-Net model directory (written by 'scoresde train --net unet')"
    let dataDir = dataDirOption "Directory of MNIST-format train/t10k files (apt-get install dataset-fashion-mnist)"
    let split = Opt.choice "--split" "The split whose images are inpainted" [ "test"; "train" ] (Some "test")
    let first = Opt.intAtLeast 0 "--first" "Index of the first image" (Some 0)
    let n = Opt.intAtLeast 1 "--n" "Number of images" (Some 8)
    let samples = Opt.intAtLeast 1 "--samples" "Samples drawn per image (rows of the grid)" (Some 1)
    let maskOption =
        Opt.text
            "--mask"
            "The hidden part: right-half, left-half, bottom-half, top-half, or a .npy/.csv file nonzero where known (H x W or C x H x W)"
            (Some "right-half")
    let replacement =
        Conditioning.replacementOption
            "'fresh' redraws the known part after every update (the paper's, default for pc), 'fixed' keeps one latent for it (default for ode and dpm)"
    let seed = Opt.seed "Seed of the prior draw and the sampler's noise"
    let scale = Opt.intAtLeast 1 "--scale" "Screen pixels per image pixel in the grid" (Some 3)
    let out = Opt.required "--out" "The grid, a .png file"
    let npy =
        Opt.text "--npy" "Also write the samples (the model's pixel range, one row of images per sample) to this .npy file" None
    for o in
        [ model :> Option
          dataDir
          split
          first
          n
          samples
          maskOption
          replacement
          Samplers.choice
          Samplers.steps
          Samplers.eps
          Samplers.rtol
          Samplers.atol
          seed
          scale
          out
          npy ] do
        cmd.Add o
    Samplers.addOptions cmd
    cmd.SetAction(fun (pr: ParseResult) ->
        pr
        |> act (fun ui ->
            Conditioning.namingOptions (fun () ->
                inpaint
                    ui
                    { ModelPath = pr.GetValue model
                      DataDir = pr.GetValue dataDir
                      Split = (if Opt.choiceValue pr split = "train" then Split.Train else Split.Test)
                      First = pr.GetValue first
                      Count = pr.GetValue n
                      SamplesPerImage = pr.GetValue samples
                      Mask = pr.GetValue maskOption
                      Replacement = Conditioning.replacementValue pr replacement
                      Sampler = (Samplers.selected pr).FromCommandLine pr
                      Seed = pr.GetValue seed
                      Scale = pr.GetValue scale
                      Out = pr.GetValue out
                      Npy = Option.ofObj (pr.GetValue npy) })))
    cmd
