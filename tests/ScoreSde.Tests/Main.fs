module ScoreSde.Tests.Main

open Expecto
open Expecto.Impl

[<EntryPoint>]
let main argv =
    ScoreSde.Native.ensureLoaded ()
    // One intra-op thread: the tests' tensors are small, and small tensors run faster on one thread
    // (measured ~10x faster under load than torch's default of 2 when tests ran in parallel).
    TorchSharp.torch.set_num_threads 1
    let mutable counts = (0, 0)
    let printer =
        { defaultConfig.printer with
            summary =
                fun config summary ->
                    async {
                        do! defaultConfig.printer.summary config summary
                        counts <- summary.passed.Length, summary.failed.Length + summary.errored.Length
                    } }
    // Tests run one at a time. TorchSharp 0.107 creates Scalars inside some of its own methods (the
    // alpha of `a + b`, for instance) without keeping them alive across the native call, so a
    // garbage collection triggered by another thread at that moment can finalise the Scalar while
    // libtorch reads it (observed in a parallel run: "Expected false to be true" from
    // c10::Scalar::toFloat). The libraries bind every Scalar now (ConcurrencyTests scans their IL and
    // runs every entry point from 4 threads under forced collections), but the tests' own code still
    // uses such operators (136 call sites in this assembly by the same scan: closed-form references
    // written as `a * x + b`), the memory tests read the process's RSS, and the command-line tests set
    // libtorch's process-wide thread count: in parallel those would race each other.
    let code =
        runTestsInAssemblyWithCLIArgs [ CLIArguments.Printer printer; CLIArguments.No_Spinner; CLIArguments.Sequenced ] argv
    let passed, failed = counts
    // The last line CI reads.
    printfn "%d passed, %d failed" passed failed
    code
