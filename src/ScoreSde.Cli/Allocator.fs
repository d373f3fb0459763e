namespace ScoreSde.Cli

open System
open System.Runtime.InteropServices

/// glibc's malloc returns every large block (above its mmap threshold, 128 KiB by default) to the
/// operating system when it is freed, so each libtorch operation on a [10000, 128] float32 tensor
/// (5 MB) maps fresh pages and faults them in. Measured here: one forward pass of the demo's MLP on
/// 10,000 points took 155 ms with the defaults and 14 ms with the thresholds below (the same as
/// cutting the batch into chunks of 1,024 rows). The command line is a process of its own, so it
/// raises the thresholds once at start-up; the library never changes process-wide settings.
module internal Allocator =
    [<DllImport("libc", EntryPoint = "mallopt")>]
    extern int private mallopt(int param, int value)

    let private M_TRIM_THRESHOLD = -1
    let private M_MMAP_THRESHOLD = -3

    /// Keep blocks up to 32 MiB in the heap and keep up to 256 MiB of freed memory for reuse
    /// (glibc on Linux; a no-op elsewhere). Returns whether the settings were applied.
    let tune () =
        if RuntimeInformation.IsOSPlatform OSPlatform.Linux then
            try
                mallopt (M_MMAP_THRESHOLD, 32 * 1024 * 1024) = 1 && mallopt (M_TRIM_THRESHOLD, 256 * 1024 * 1024) = 1
            with
            | :? DllNotFoundException
            | :? EntryPointNotFoundException -> false
        else false
