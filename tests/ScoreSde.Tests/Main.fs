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
    // libtorch reads it (observed once in a parallel run: "Expected false to be true" from
    // c10::Scalar::toFloat). One test thread leaves no other thread allocating during a native call.
    let code =
        runTestsInAssemblyWithCLIArgs [ CLIArguments.Printer printer; CLIArguments.No_Spinner; CLIArguments.Sequenced ] argv
    let passed, failed = counts
    // The last line CI reads.
    printfn "%d passed, %d failed" passed failed
    code
