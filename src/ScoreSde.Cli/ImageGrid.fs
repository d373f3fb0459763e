namespace ScoreSde.Cli

open System
open System.IO
open System.Runtime.InteropServices
open SkiaSharp
open TorchSharp
open ScoreSde

/// Image grids: a batch of images [N, C, H, W] (C = 1 grey or 3 RGB) as one PNG, row by row.
[<RequireQualifiedAccess>]
module ImageGrid =
    /// Pixels between images and around the grid.
    let padding = 2

    /// Columns and rows of a grid of n images: ceil(sqrt n) columns, as many rows as needed.
    let layout (n: int) =
        let cols = int (ceil (sqrt (float n)))
        cols, (n + cols - 1) / cols

    /// The grid's size in pixels for n images of h x w, each pixel drawn `scale` x `scale`.
    let size (n: int) (h: int) (w: int) (scale: int) =
        let cols, rows = layout n
        cols * w * scale + (cols + 1) * padding, rows * h * scale + (rows + 1) * padding

    /// Tiles of a grid of n images of c channels: one per image for grey (1) and RGB (3) images, one
    /// per channel (grey, an image's channels side by side) otherwise.
    let tiles (n: int) (c: int) = if c = 1 || c = 3 then n else n * c

    /// Write 8-bit levels (uint8 [N, C, H, W]) as a PNG grid on a white background: grey images for
    /// C = 1, colour for C = 3, and every channel as a grey image of its own for other C.
    let writeLevels (path: string) (scale: int) (levels: Tensor) =
        if levels.dtype <> torch.uint8 || levels.dim () <> 4L then
            raise (
                ArgumentException(sprintf "an image grid needs uint8 levels [N, C, H, W] (got %O %A)." levels.dtype levels.shape, "levels")
            )
        if scale < 1 then
            raise (ArgumentException(sprintf "scale must be at least 1 (got %d)." scale, "scale"))
        let n, c, h, w = int levels.shape.[0], int levels.shape.[1], int levels.shape.[2], int levels.shape.[3]
        let colour = c = 3
        let count = tiles n c
        let cols, _ = layout count
        let width, height = size count h w scale
        use contiguous = levels.cpu().contiguous()
        let bytes = contiguous.bytes.ToArray()
        let pixels = Array.create (width * height * 4) 255uy
        for k in 0 .. count - 1 do
            // tile k shows image k (grey or colour) or channel k % c of image k / c
            let plane = if colour then k * 3 else k
            let x0 = padding + (k % cols) * (w * scale + padding)
            let y0 = padding + (k / cols) * (h * scale + padding)
            for y in 0 .. h - 1 do
                for x in 0 .. w - 1 do
                    let at ch = bytes.[((plane + ch) * h + y) * w + x]
                    let r, g, b = if colour then at 0, at 1, at 2 else at 0, at 0, at 0
                    for dy in 0 .. scale - 1 do
                        for dx in 0 .. scale - 1 do
                            let o = ((y0 + y * scale + dy) * width + x0 + x * scale + dx) * 4
                            pixels.[o] <- r
                            pixels.[o + 1] <- g
                            pixels.[o + 2] <- b
        use bitmap = new SKBitmap(SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque))
        Marshal.Copy(pixels, 0, bitmap.GetPixels(), pixels.Length)
        use image = SKImage.FromBitmap bitmap
        use data = image.Encode(SKEncodedImageFormat.Png, 100)
        Outputs.writeFile path (fun temp ->
            use file = File.Create temp
            data.SaveTo file)

    /// Write images in a model's pixel range (floats [N, C, H, W]) as a PNG grid: each value goes to
    /// its nearest 8-bit level (clamped), as `Pixels.toLevels`.
    let write (path: string) (range: PixelRange) (scale: int) (images: Tensor) =
        use levels = Pixels.toLevels range images
        writeLevels path scale levels
