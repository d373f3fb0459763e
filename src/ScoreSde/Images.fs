namespace ScoreSde

open System
open System.IO
open TorchSharp

/// How 8-bit pixel levels b in 0..255 map to the space a model works in (stored with the model).
[<RequireQualifiedAccess>]
type PixelRange =
    /// x = b / 255, in [0, 1] (the paper's choice for its VE models).
    | ZeroOne
    /// x = 2 b / 255 - 1, in [-1, 1] (centred: the paper's choice for its VP and sub-VP models).
    | Centred

/// Pixel conventions of the paper (Song et al. 2021, after Ho et al. 2020): 8-bit levels scaled to
/// [0, 1] or [-1, 1], and uniform dequantisation for likelihoods, y = (b + u) / 256 with
/// u ~ U(0, 1) per pixel, mapped to the model's range the same way. A density p on that range gives
/// a bound on the bits per dimension of the discrete data:
/// -log2 p(y) / D + log2(256 / width of the range), i.e. an offset of 8 bits for [0, 1] and 7 for
/// [-1, 1] (`bitsPerDimOffset`, the Likelihood settings' DequantizationOffset).
[<RequireQualifiedAccess>]
module Pixels =
    /// Width of the range: 1 for [0, 1], 2 for [-1, 1].
    let width (range: PixelRange) =
        match range with
        | PixelRange.ZeroOne -> 1.0
        | PixelRange.Centred -> 2.0

    /// The lower end of the range: 0 or -1.
    let lower (range: PixelRange) =
        match range with
        | PixelRange.ZeroOne -> 0.0
        | PixelRange.Centred -> -1.0

    /// The name used in model files and on the command line: "zero-one" or "centred".
    let name (range: PixelRange) =
        match range with
        | PixelRange.ZeroOne -> "zero-one"
        | PixelRange.Centred -> "centred"

    /// The range named "zero-one" (or "0,1") or "centred" (or "centered", "-1,1").
    let tryParse (text: string) =
        match (if isNull text then "" else text.Trim().ToLowerInvariant()) with
        | "zero-one"
        | "0,1" -> Some PixelRange.ZeroOne
        | "centred"
        | "centered"
        | "-1,1" -> Some PixelRange.Centred
        | _ -> None

    /// log2(256 / width): the bits per dimension to add to -log2 p(y) / D for dequantised 8-bit data.
    let bitsPerDimOffset (range: PixelRange) = Math.Log2(256.0 / width range)

    let private checkBytes (param: string) (b: Tensor) =
        Check.notNull param b
        if b.dtype <> torch.uint8 then
            Check.fail param b.dtype "a uint8 tensor of pixel levels 0..255"

    let private checkDtype (dtype: torch.ScalarType) =
        if not (dtype = torch.float32 || dtype = torch.float64) then
            Check.fail "dtype" dtype "float32 or float64"

    /// a v + c for the map of levels/256 or levels/255 onto the range (Scalars bound for the calls).
    let private affine (v: Tensor) (a: float) (c: float) : Tensor = Tensors.affine v a c

    /// Pixel levels (uint8, any shape) in the model's range, as a new tensor of `dtype`.
    let toModel (range: PixelRange) (dtype: torch.ScalarType) (levels: Tensor) : Tensor =
        checkBytes "levels" levels
        checkDtype dtype
        use v = levels.to_type (dtype)
        affine v (width range / 255.0) (lower range)

    /// Uniformly dequantised pixels in the model's range: ((b + u) / 256) mapped like `toModel`, with
    /// u ~ U(0, 1) per pixel drawn from `generator` (on its device, then moved to the levels' device).
    let dequantise (range: PixelRange) (dtype: torch.ScalarType) (generator: torch.Generator) (levels: Tensor) : Tensor =
        checkBytes "levels" levels
        checkDtype dtype
        Check.notNull "generator" generator
        use u = torch.rand (levels.shape, dtype = dtype, device = generator.device, generator = generator)
        use ud = u.``to`` (levels.device)
        use v = levels.to_type (dtype)
        Tensors.addInPlace v ud |> ignore
        affine v (width range / 256.0) (lower range)

    /// Values in the model's range back to pixel levels: the nearest level, clamped to 0..255 (uint8).
    let toLevels (range: PixelRange) (x: Tensor) : Tensor =
        Check.floating "x" x
        use scope = torch.NewDisposeScope()
        use s = Tensors.scalar (255.0 / width range)
        use lo = Tensors.scalar (lower range)
        use zero = Tensors.scalar 0.0
        use top = Tensors.scalar 255.0
        let v = x.detach().to_type(torch.float64).sub(lo).mul(s).round_().clamp_(zero, top)
        v.to_type(torch.uint8).MoveToOuterDisposeScope()

/// A set of 8-bit images with optional integer labels: pixel levels as a uint8 [N, C, H, W] CPU
/// tensor (owned by this value, disposed with it). Scale batches to a model's range with `Pixels`.
type ImageSet =
    {
        /// Pixel levels 0..255, uint8 [N, C, H, W] on the CPU.
        Levels: Tensor
        /// One label per image, when the source has labels.
        Labels: int64[] option
        /// Where the images came from (file or directory), for messages.
        Source: string
    }

    /// Number of images.
    member s.Count = s.Levels.shape.[0]

    /// Shape of one image: [C, H, W].
    member s.SampleShape = s.Levels.shape.[1..]

    interface IDisposable with
        member s.Dispose() = s.Levels.Dispose()

[<RequireQualifiedAccess>]
module ImageSet =
    /// Images [N, 1, H, W] from MNIST-format IDX files of images and, optionally, labels (gzipped or
    /// not); the two files must hold the same number of items.
    let ofIdx (imagesPath: string) (labelsPath: string option) : ImageSet =
        Native.ensureLoaded ()
        let images = Idx.readImages imagesPath
        let labels =
            labelsPath
            |> Option.map (fun p ->
                let l = Idx.readLabels p
                if l.Dims.[0] <> images.Dims.[0] then
                    FileError.fail
                        p
                        (sprintf "holds %d labels but %s holds %d images; the counts must match" l.Dims.[0] imagesPath images.Dims.[0])
                l.Data |> Array.map int64)
        let shape = [| int64 images.Dims.[0]; 1L; int64 images.Dims.[1]; int64 images.Dims.[2] |]
        { Levels = torch.tensor(images.Data, dtype = torch.uint8).reshape(shape)
          Labels = labels
          Source = imagesPath }

    /// Images from a NumPy `.npy` array [N, C, H, W] or [N, H, W] (one channel): uint8 levels, or
    /// float32/float64 values in [0, 1] on the 8-bit grid (k / 255, as written by `x / 255`).
    let ofNpy (path: string) : ImageSet =
        Native.ensureLoaded ()
        let a = Npy.read path
        let shape =
            match a.Shape with
            | [| n; h; w |] -> [| n; 1L; h; w |]
            | [| _; _; _; _ |] -> a.Shape
            | s ->
                FileError.fail path (sprintf "holds an array of shape (%s); images are N x C x H x W or N x H x W" (String.Join(", ", s)))
        if shape |> Array.exists (fun d -> d < 1L) then
            FileError.fail path (sprintf "holds an empty array of shape (%s)" (String.Join(", ", a.Shape)))
        let levels =
            if a.Dtype = torch.uint8 then
                a.Values
            else
                a.Values
                |> Array.mapi (fun i v ->
                    let l = v * 255.0
                    if Double.IsNaN v || v < 0.0 || v > 1.0 || abs (l - Math.Round l) > 1e-3 then
                        FileError.fail
                            path
                            (sprintf
                                "element %d is %g; float images must hold 8-bit levels k / 255 in [0, 1] (or store uint8 levels 0..255)"
                                i
                                v)
                    Math.Round l)
        let bytes = levels |> Array.map byte
        { Levels = torch.tensor(bytes, dtype = torch.uint8).reshape(shape); Labels = None; Source = path }

    /// The images at `indices` (an int64 tensor) in the model's range, as a new [B, C, H, W] tensor.
    let batch (range: PixelRange) (dtype: torch.ScalarType) (indices: Tensor) (set: ImageSet) : Tensor =
        Check.notNull "set" set
        use levels = set.Levels.index_select (0L, indices)
        Pixels.toModel range dtype levels

/// Which part of a dataset.
[<RequireQualifiedAccess>]
type Split =
    /// The training images (60,000 for Fashion-MNIST).
    | Train
    /// The test images (10,000 for Fashion-MNIST).
    | Test

/// Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): 28 x 28 grey-level images of 10 kinds of clothing,
/// in MNIST's IDX format. Debian ships it (`apt-get install dataset-fashion-mnist`); any directory of
/// MNIST-format files with the standard names works (MNIST itself included).
[<RequireQualifiedAccess>]
module FashionMnist =
    /// Where Debian's dataset-fashion-mnist package installs the files.
    let defaultDirectory = "/usr/share/datasets/fashion-mnist"

    /// The names of the 10 classes, by label.
    let classNames =
        [| "T-shirt/top"
           "Trouser"
           "Pullover"
           "Dress"
           "Coat"
           "Sandal"
           "Shirt"
           "Sneaker"
           "Bag"
           "Ankle boot" |]

    /// The file names (without a .gz suffix) of a split's images and labels.
    let fileNames (split: Split) =
        let prefix =
            match split with
            | Split.Train -> "train"
            | Split.Test -> "t10k"
        prefix + "-images-idx3-ubyte", prefix + "-labels-idx1-ubyte"

    /// The path of a file in `dir`, gzipped or not, or a one-line error that says how to get it.
    let private locate (dir: string) (name: string) =
        let plain = Path.Combine(dir, name)
        let gz = plain + ".gz"
        if File.Exists gz then
            gz
        elif File.Exists plain then
            plain
        else
            raise (
                ArgumentException(
                    sprintf
                        "Fashion-MNIST not found: %s holds no %s(.gz). Install it with `apt-get install dataset-fashion-mnist` (into %s) or give the directory that holds MNIST-format train/t10k files (the command line's --data-dir)."
                        dir
                        name
                        defaultDirectory,
                    "dir"
                )
            )

    /// One split of the dataset in `dir`, with its labels.
    let load (dir: string) (split: Split) : ImageSet =
        if String.IsNullOrWhiteSpace dir then
            Check.fail "dir" dir "a directory path"
        let images, labels = fileNames split
        let imagesPath = locate dir images
        let labelsPath = locate dir labels
        ImageSet.ofIdx imagesPath (Some labelsPath)
