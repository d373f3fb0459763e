module ScoreSde.Tests.Main

open Expecto
open Expecto.Impl

[<EntryPoint>]
let main argv =
    ScoreSde.Native.ensureLoaded ()
    // Expecto runs tests in parallel on a 2-core machine: one intra-op thread per test avoids
    // oversubscription (measured ~10x faster under load than torch's default of 2).
    TorchSharp.torch.set_num_threads 1
    let mutable counts = (0, 0)
    let printer =
        { defaultConfig.printer with
            summary = fun config summary ->
                async {
                    do! defaultConfig.printer.summary config summary
                    counts <- summary.passed.Length, summary.failed.Length + summary.errored.Length
                } }
    let code = runTestsInAssemblyWithCLIArgs [ CLIArguments.Printer printer; CLIArguments.No_Spinner ] argv
    let passed, failed = counts
    // The last line CI reads.
    printfn "%d passed, %d failed" passed failed
    code
