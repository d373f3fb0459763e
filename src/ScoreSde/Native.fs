namespace ScoreSde

open System
open System.IO
open System.Runtime.InteropServices

/// Makes sure TorchSharp runs on the libtorch it was built for.
///
/// TorchSharp resolves `libtorch.so` by bare name when no .deps.json guides it (F# scripts, plug-in
/// hosts). If another libtorch sits on the system library path (Debian's `libtorch-dev` 1.13, which
/// `apt-get install python3-torch` recommends, installs `/usr/lib/x86_64-linux-gnu/libtorch.so`),
/// that one wins and TorchSharp's glue fails to load. Loading the bundled libraries by full path
/// first makes every later by-name lookup resolve to them (the dynamic loader matches the already
/// loaded SONAME).
module Native =
    let private libraries = [ "libc10.so"; "libtorch_cpu.so"; "libtorch.so"; "libLibTorchSharp.so" ]

    let private candidateDirectories () =
        let torchDir = Path.GetDirectoryName(typeof<TorchSharp.torch>.Assembly.Location)
        let rid = if RuntimeInformation.ProcessArchitecture = Architecture.Arm64 then "linux-arm64" else "linux-x64"
        [ if not (String.IsNullOrEmpty torchDir) then
              Path.Combine(torchDir, "runtimes", rid, "native")
              torchDir
          Path.Combine(AppContext.BaseDirectory, "runtimes", rid, "native")
          AppContext.BaseDirectory ]

    let private load =
        lazy
            (if RuntimeInformation.IsOSPlatform OSPlatform.Linux then
                 candidateDirectories ()
                 |> List.tryFind (fun d -> File.Exists(Path.Combine(d, "libtorch.so")))
                 |> Option.iter (fun dir ->
                     for lib in libraries do
                         let path = Path.Combine(dir, lib)
                         if File.Exists path then
                             NativeLibrary.Load path |> ignore))

    /// Load TorchSharp's bundled libtorch by full path (Linux; a no-op elsewhere and after the first
    /// call). Call it before the first TorchSharp call in a script; the library's entry points call
    /// it themselves.
    let ensureLoaded () = load.Force()
