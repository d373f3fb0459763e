/// What ScoreSde's native loading costs at start-up (`-- --native-startup [rounds]`): each sample is a
/// fresh process that loads libtorch by full path, then times `ScoreSde.Native.ensureLoaded ()` (the
/// glue's part: finding it, loading it, and where needed making and loading the weak-marked copy) and
/// the first TorchSharp call after it (TorchSharp's own probing for its glue). Three states, measured in
/// alternation:
/// - build-marked: the output folder's glue is weak-marked by the build (package consumers, this repo);
/// - run-time, first run: the output folder holds the original glue and the cache is empty, so the copy
///   is written (project references, scripts, notebooks on their first run);
/// - run-time, later runs: the copy is in the cache and is checked and loaded.
/// The output folder's glue is swapped for the original during the run and restored afterwards.
module ScoreSde.Benchmarks.NativeStartup

open System
open System.Diagnostics
open System.IO
open System.Reflection
open System.Runtime.InteropServices

let private native = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native")

/// In the child process: print "<ensureLoaded ms> <first TorchSharp call ms>".
let child () =
    for lib in [ "libc10.so"; "libtorch_cpu.so"; "libtorch.so" ] do
        NativeLibrary.Load(Path.Combine(native, lib)) |> ignore
    let sw = Stopwatch.StartNew()
    ScoreSde.Native.ensureLoaded ()
    let loaded = sw.Elapsed.TotalMilliseconds
    use t = TorchSharp.torch.ones (3L)
    let first = sw.Elapsed.TotalMilliseconds - loaded
    Console.WriteLine(String.Format(Globalization.CultureInfo.InvariantCulture, "{0:F2} {1:F2}", loaded, first))
    0

let private median (xs: float list) =
    let s = List.sort xs
    s.[s.Length / 2]

/// In the parent: `rounds` samples of each state; prints medians and minima.
let run (rounds: int) =
    let glue = Path.Combine(native, "libLibTorchSharp.so")
    let torchSharpVersion =
        typeof<TorchSharp.torch>.Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>().InformationalVersion.Split('+').[0]
    let packages =
        match Environment.GetEnvironmentVariable "NUGET_PACKAGES" with
        | null
        | "" -> Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".nuget", "packages")
        | p -> p
    let original =
        File.ReadAllBytes(Path.Combine(packages, "torchsharp", torchSharpVersion, "runtimes", "linux-x64", "native", "libLibTorchSharp.so"))
    let marked = File.ReadAllBytes glue
    let stamp = File.GetLastWriteTimeUtc glue
    let cache = Directory.CreateTempSubdirectory("scoresde-startup-").FullName
    let sample () =
        let psi = ProcessStartInfo(Environment.ProcessPath, RedirectStandardOutput = true, RedirectStandardError = true)
        // Started by the apphost (dotnet run) or by `dotnet <dll>`.
        if Path.GetFileNameWithoutExtension Environment.ProcessPath = "dotnet" then
            psi.ArgumentList.Add(Assembly.GetEntryAssembly().Location)
        psi.ArgumentList.Add "--native-startup-child"
        psi.Environment.["XDG_CACHE_HOME"] <- cache
        use p = Process.Start psi
        let out = p.StandardOutput.ReadToEnd()
        let err = p.StandardError.ReadToEnd()
        p.WaitForExit()
        if p.ExitCode <> 0 then
            failwithf "the child process failed (%d): %s%s" p.ExitCode out err
        let v =
            out.Trim().Split(' ')
            |> Array.map (fun s -> Double.Parse(s, Globalization.CultureInfo.InvariantCulture))
        v.[0], v.[1]
    let results = Collections.Generic.Dictionary<string, ResizeArray<float * float>>()
    let record name v =
        if not (results.ContainsKey name) then
            results.[name] <- ResizeArray()
        results.[name].Add v
    let states = [ "build-marked glue"; "run-time copy, first run"; "run-time copy, later runs" ]
    try
        for _ in 1..rounds do
            File.WriteAllBytes(glue, marked)
            if Directory.Exists cache then
                Directory.Delete(cache, true)
            record states.[0] (sample ())
            File.WriteAllBytes(glue, original)
            record states.[1] (sample ())
            record states.[2] (sample ())
    finally
        File.WriteAllBytes(glue, marked)
        File.SetLastWriteTimeUtc(glue, stamp)
        if Directory.Exists cache then
            Directory.Delete(cache, true)
    printfn "Native loading at start-up, %d processes per state in alternation (milliseconds; libtorch preloaded):" rounds
    printfn ""
    printfn "| state | ensureLoaded, median | min | first TorchSharp call, median | min |"
    printfn "|---|---:|---:|---:|---:|"
    for s in states do
        let ensure = [ for a, _ in results.[s] -> a ]
        let first = [ for _, b in results.[s] -> b ]
        printfn "| %s | %.1f | %.1f | %.1f | %.1f |" s (median ensure) (List.min ensure) (median first) (List.min first)
    0
