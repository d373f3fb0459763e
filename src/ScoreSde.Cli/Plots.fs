namespace ScoreSde.Cli

open System
open System.IO
open ScottPlot
open SkiaSharp

/// 2-D point clouds on the host: x and y coordinates.
type Cloud = { X: float[]; Y: float[] }

/// PNG figures drawn with ScottPlot (headless: it renders through SkiaSharp, no display needed).
[<RequireQualifiedAccess>]
module Plots =
    /// Axis limits (left, right, bottom, top).
    type Limits = { Left: float; Right: float; Bottom: float; Top: float }

    let private palette = [| "#1f77b4"; "#d62728"; "#2ca02c"; "#9467bd"; "#ff7f0e"; "#8c564b"; "#e377c2"; "#17becf" |]

    /// The i-th colour of the figures' palette.
    let colour (i: int) = Color.FromHex(palette.[i % palette.Length])

    /// Host coordinates of an [N, 2] tensor.
    let cloud (points: TorchSharp.torch.Tensor) : Cloud =
        use d = points.detach().cpu().to_type(TorchSharp.torch.float64).contiguous()
        let v = d.data<float>().ToArray()
        let n = v.Length / 2
        { X = Array.init n (fun i -> v.[2 * i]); Y = Array.init n (fun i -> v.[2 * i + 1]) }

    /// Square limits around a cloud: its 0.5% to 99.5% range in both axes, with a margin.
    let limitsOf (c: Cloud) : Limits =
        let q (v: float[]) (p: float) =
            let s = Array.sort v
            s.[int (p * float (s.Length - 1))]
        let cx, cy = (q c.X 0.005 + q c.X 0.995) / 2.0, (q c.Y 0.005 + q c.Y 0.995) / 2.0
        let half = 0.6 * max (q c.X 0.995 - q c.X 0.005) (q c.Y 0.995 - q c.Y 0.005) |> max 0.5
        { Left = cx - half; Right = cx + half; Bottom = cy - half; Top = cy + half }

    let private newPlot (title: string) (limits: Limits option) =
        let plot = new Plot()
        plot.Title(title) |> ignore
        limits |> Option.iter (fun l -> plot.Axes.SetLimits(l.Left, l.Right, l.Bottom, l.Top))
        plot

    let private addPoints (plot: Plot) (c: Cloud) (colourIndex: int) =
        let sp = plot.Add.ScatterPoints(c.X, c.Y)
        sp.MarkerSize <- 2.0f
        sp.Color <- (colour colourIndex).WithAlpha(0.35)

    /// A scatter plot of a point cloud.
    let scatterPlot (title: string) (limits: Limits option) (c: Cloud) (colourIndex: int) : Plot =
        let plot = newPlot title limits
        addPoints plot c colourIndex
        plot

    /// Paths of a few samples through one sampler's steps over a faint cloud of the data; a dot marks
    /// where each path ends.
    let trajectoryPlot (title: string) (limits: Limits option) (background: Cloud) (paths: Cloud list) (colourIndex: int) : Plot =
        let plot = newPlot title limits
        let bg = plot.Add.ScatterPoints(background.X, background.Y)
        bg.MarkerSize <- 1.5f
        bg.Color <- Color.FromHex("#999999").WithAlpha(0.25)
        for path in paths do
            let line = plot.Add.ScatterLine(path.X, path.Y)
            line.Color <- (colour colourIndex).WithAlpha(0.7)
            line.LineWidth <- 1.0f
            let last = path.X.Length - 1
            let start = plot.Add.ScatterPoints([| path.X.[0] |], [| path.Y.[0] |])
            start.Color <- Color.FromHex("#000000")
            start.MarkerSize <- 5.0f
            let endPoint = plot.Add.ScatterPoints([| path.X.[last] |], [| path.Y.[last] |])
            endPoint.Color <- colour colourIndex
            endPoint.MarkerSize <- 8.0f
        plot

    /// The training loss per step (faint) and its moving average over `window` steps.
    let lossPlot (losses: float[]) (window: int) : Plot =
        let plot = newPlot "Training loss" None
        let xs = Array.init losses.Length float
        let raw = plot.Add.ScatterLine(xs, losses)
        raw.Color <- (colour 0).WithAlpha(0.25)
        raw.LegendText <- "per step"
        let w = max 1 (min window losses.Length)
        let mutable acc = 0.0
        let avg =
            Array.init losses.Length (fun i ->
                acc <- acc + losses.[i]
                if i >= w then
                    acc <- acc - losses.[i - w]
                acc / float (min (i + 1) w))
        let smooth = plot.Add.ScatterLine(xs, avg)
        smooth.Color <- colour 1
        smooth.LineWidth <- 2.0f
        smooth.LegendText <- sprintf "moving average (%d steps)" w
        plot.XLabel("step") |> ignore
        plot.YLabel("loss") |> ignore
        plot.Axes.SetLimitsY(0.0, (Array.max avg) * 1.1)
        plot.ShowLegend() |> ignore
        plot

    /// Save one plot as a PNG (and dispose it).
    let save (path: string) (width: int) (height: int) (plot: Plot) =
        use p = plot
        Outputs.writeFile path (fun temporary -> p.SavePng(temporary, width, height) |> ignore)

    /// Save plots side by side in one PNG, each cell width x height (and dispose them).
    let saveRow (path: string) (width: int) (height: int) (plots: Plot list) =
        let info = SKImageInfo(width * plots.Length, height)
        use surface = SKSurface.Create info
        let canvas = surface.Canvas
        canvas.Clear(SKColors.White)
        plots
        |> List.iteri (fun i plot ->
            use p = plot
            // each plot renders on its own image (a plot clears the whole canvas it is given)
            use bitmap = SKBitmap.Decode(p.GetImageBytes(width, height, ImageFormat.Png))
            canvas.DrawBitmap(bitmap, float32 (i * width), 0.0f))
        use image = surface.Snapshot()
        use data = image.Encode(SKEncodedImageFormat.Png, 100)
        Outputs.writeFile path (fun temporary ->
            use file = File.Create temporary
            data.SaveTo file)
