namespace ScoreSde.Cli

open System
open System.IO
open Spectre.Console

/// Where the command line writes: results to Out, errors to Err, progress bars and status lines
/// to Out unless quiet. Tests pass their own writers, so the tool runs in-process.
type Ui = { Out: TextWriter; Err: TextWriter; Quiet: bool; Console: IAnsiConsole }

[<RequireQualifiedAccess>]
module Ui =
    /// A UI over the given writers. Progress bars animate only when Out is the interactive console.
    let create (out: TextWriter) (err: TextWriter) (quiet: bool) =
        let interactive = obj.ReferenceEquals(out, Console.Out) && not Console.IsOutputRedirected
        let settings =
            AnsiConsoleSettings(
                Out = AnsiConsoleOutput(out),
                Ansi = (if interactive then AnsiSupport.Detect else AnsiSupport.No),
                ColorSystem = (if interactive then ColorSystemSupport.Detect else ColorSystemSupport.NoColors),
                Interactive = (if interactive then InteractionSupport.Yes else InteractionSupport.No)
            )
        let console = AnsiConsole.Create settings
        // Redirected output has no terminal width; keep table rows on one line.
        if not interactive then
            console.Profile.Width <- 120
        { Out = out; Err = err; Quiet = quiet; Console = console }

    /// A status line (suppressed by --quiet).
    let info (ui: Ui) (text: string) =
        if not ui.Quiet then
            ui.Out.WriteLine text

    /// Run `body` with a progress bar of `total` units (0: unknown in advance, an indeterminate bar);
    /// body gets a function that advances it by one unit and returns its result. Without an
    /// interactive console (or with --quiet) no bar is drawn.
    let progress (ui: Ui) (label: string) (total: int) (body: (unit -> unit) -> 'a) : 'a =
        if ui.Quiet || not ui.Console.Profile.Capabilities.Interactive then
            body ignore
        else
            let mutable result = Unchecked.defaultof<'a>
            ui.Console
                .Progress()
                .AutoClear(false)
                .HideCompleted(false)
                .Columns(
                    [| TaskDescriptionColumn() :> ProgressColumn
                       ProgressBarColumn()
                       PercentageColumn()
                       ElapsedTimeColumn()
                       RemainingTimeColumn() |]
                )
                .Start(fun ctx ->
                    let task = ctx.AddTask(Markup.Escape label, true, float (max total 1))
                    if total <= 0 then
                        task.IsIndeterminate <- true
                    result <- body (fun () -> task.Increment 1.0)
                    task.Value <- task.MaxValue)
            result

    /// Print a table of results (always shown, also with --quiet).
    let table (ui: Ui) (title: string) (headers: string list) (rows: string list list) =
        let t = Table()
        t.Title <- TableTitle(Markup.Escape title)
        t.Border <- TableBorder.Rounded
        for h in headers do
            t.AddColumn(TableColumn(Markup.Escape h)) |> ignore
        for h in 1 .. headers.Length - 1 do
            t.Columns.[h].RightAligned() |> ignore
        for r in rows do
            t.AddRow(r |> List.map Markup.Escape |> List.toArray) |> ignore
        ui.Console.Write t
