namespace ScoreSde.Cli

open System
open System.Runtime.InteropServices

/// glibc's malloc serves blocks above its mmap threshold (128 KiB at start) with fresh mappings and
/// returns freed memory at the top of the heap to the system beyond its trim threshold, so libtorch
/// operations on [10000, 128] float32 activations (5 MB) keep faulting fresh pages in. Measured with
/// `scoresde sample --model out/model --sampler ode --solver rk4 --steps 50 --n 10000 --out s.npy`:
/// 23 s (11 s of it system time) with glibc's defaults, 2.5 s with the thresholds below. (glibc
/// raises the mmap threshold by itself after some frees, so the effect depends on what ran before.)
/// The command line is a process of its own, so it sets the thresholds once at start-up; the
/// library never changes process-wide settings.
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
                mallopt (M_MMAP_THRESHOLD, 32 * 1024 * 1024) = 1
                && mallopt (M_TRIM_THRESHOLD, 256 * 1024 * 1024) = 1
            with
            | :? DllNotFoundException
            | :? EntryPointNotFoundException -> false
        else
            false
