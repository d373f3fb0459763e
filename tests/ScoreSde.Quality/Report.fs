/// Tables (markdown) and log-log plots (PNG) of distance versus model evaluations.
module ScoreSde.Quality.Report

open System
open System.Globalization
open System.Text

/// One sampler's results: per requested budget, the evaluations used and the distance (None when the
/// budget is too small for the method).
type Row = { Name: string; Family: string; Cells: (int * float) option[] }

/// A report written as it is printed: every line goes to stdout and into the text.
type Log() =
    let text = StringBuilder()
    member _.Say(line: string) =
        printfn "%s" line
        text.AppendLine line |> ignore
    override _.ToString() = text.ToString()

let private inv (format: string) (v: float) = v.ToString(format, CultureInfo.InvariantCulture)

/// A markdown table: one column per budget; a cell that used fewer evaluations than requested shows
/// them in brackets.
let table (budgets: int[]) (rows: Row list) : string =
    let sb = StringBuilder()
    sb.Append("| sampler | ").Append(String.Join(" | ", budgets |> Array.map string)).AppendLine(" |")
    |> ignore
    sb.Append("|---|").Append(String.replicate budgets.Length "---:|").AppendLine() |> ignore
    for r in rows do
        let cells =
            Array.map2
                (fun (budget: int) (c: (int * float) option) ->
                    match c with
                    | None -> "-"
                    | Some(nfe, d) when nfe <> budget -> sprintf "%s (%d)" (inv "0.0000" d) nfe
                    | Some(_, d) -> inv "0.0000" d)
                budgets
                r.Cells
        sb.Append("| ").Append(r.Name).Append(" | ").Append(String.Join(" | ", cells)).AppendLine(" |")
        |> ignore
    sb.ToString()

/// A log-log plot of distance versus evaluations, one line per series, the noise floor dashed.
let plot (path: string) (title: string) (series: (string * (int * float)[]) list) (noiseFloor: float) =
    use plt = new ScottPlot.Plot()
    let palette = ScottPlot.Palettes.Category20()
    let mutable lo, hi = Math.Log10 noiseFloor, Math.Log10 noiseFloor
    let mutable xlo, xhi = Double.MaxValue, Double.MinValue
    series
    |> List.iteri (fun i (name, points) ->
        if points.Length > 0 then
            let xs = points |> Array.map (fst >> float >> Math.Log10)
            let ys = points |> Array.map (snd >> Math.Log10)
            lo <- min lo (Array.min ys)
            hi <- max hi (Array.max ys)
            xlo <- min xlo (Array.min xs)
            xhi <- max xhi (Array.max xs)
            let s = plt.Add.Scatter(xs, ys)
            s.LegendText <- name
            s.Color <- palette.GetColor i
            s.LineWidth <- 1.5f
            s.MarkerSize <- 4.0f)
    let floor = plt.Add.HorizontalLine(Math.Log10 noiseFloor)
    floor.LinePattern <- ScottPlot.LinePattern.Dashed
    floor.Color <- ScottPlot.Colors.Black
    floor.LegendText <- "noise floor (two exact sets)"
    let decadeTicks (a: float) (b: float) =
        [| for e in int (Math.Floor a) .. int (Math.Ceiling b) do
               for m in [ 1.0; 2.0; 5.0 ] do
                   let v = Math.Log10 m + float e
                   if v >= a - 0.05 && v <= b + 0.05 then
                       yield v |]
    let label (v: float) = (Math.Pow(10.0, v)).ToString("0.####", CultureInfo.InvariantCulture)
    let yt = decadeTicks lo hi
    plt.Axes.Left.SetTicks(yt, yt |> Array.map label)
    let xt = decadeTicks xlo xhi
    plt.Axes.Bottom.SetTicks(xt, xt |> Array.map label)
    plt.Axes.SetLimits(xlo - 0.05, xhi + 0.05, lo - 0.1, hi + 0.1)
    plt.Title(title)
    plt.XLabel("model evaluations")
    plt.YLabel("sliced Wasserstein-1 to exact samples")
    plt.ShowLegend(ScottPlot.Alignment.UpperRight) |> ignore
    plt.SavePng(path, 1100, 800) |> ignore
