namespace ScoreSde

open System
open System.IO
open System.Reflection
open System.Runtime.InteropServices

/// Makes sure TorchSharp runs on the libtorch it was built for, on any glibc distribution.
///
/// Two problems are solved here, before TorchSharp's first native call:
///
/// 1. Another libtorch on the system library path. TorchSharp resolves `libtorch.so` by bare name when
///    no .deps.json guides it (F# scripts, notebooks, plug-in hosts). If another libtorch sits on the
///    system path (Debian's `libtorch-dev` 1.13, which `apt-get install python3-torch` recommends),
///    that one would win and TorchSharp's glue would fail to load. Loading the bundled libraries by
///    full path first makes every later bare-name lookup resolve to them: glibc's dlopen matches a
///    bare name against the SONAME of an already loaded library.
///
/// 2. An older libstdc++. TorchSharp 0.107's glue `libLibTorchSharp.so` was linked by GCC 13, so it
///    asks libstdc++ for the version GLIBCXX_3.4.32 for a single symbol (`_ZSt21ios_base_library_initv`,
///    a link-time marker it never calls). Debian 12 and Ubuntu 22.04 stop at GLIBCXX_3.4.30 and the
///    dynamic loader refuses the whole library. The ScoreSde package's build targets mark that one
///    requirement weak in the app's output folder; where that did not happen (a project reference,
///    a script or notebook that loads TorchSharp straight from the NuGet cache, a single-file
///    extraction), this module writes a weak-marked copy of the glue into a per-user cache folder
///    (`$XDG_CACHE_HOME/ScoreSde/native`, else `~/.cache/ScoreSde/native`, one subfolder per hash and
///    size of the original, written under a temporary name then renamed) and loads that copy by full
///    path. TorchSharp then finds it although it asks by name: the runtime's probing ends with a bare
///    `dlopen("libLibTorchSharp.so")`, which matches the loaded copy's SONAME (the earlier full-path
///    attempts at the unpatched file fail and the runtime moves on). No resolver is registered on
///    TorchSharp's assembly (that hook belongs to TorchSharp and the application), the NuGet cache
///    and the app's folder are never written, and where libstdc++ has the version nothing is copied.
module Native =
    /// ELF64 (little-endian) version-needs tables (.gnu.version_r): what a shared library requires
    /// from which library, and the one edit this module makes (a requirement's VER_FLG_WEAK bit).
    /// Malformed input raises.
    module internal Elf =
        let private u16 (b: byte[]) (o: int64) = int (BitConverter.ToUInt16(b, int o))
        let private u32 (b: byte[]) (o: int64) = int64 (BitConverter.ToUInt32(b, int o))
        let private i64 (b: byte[]) (o: int64) = BitConverter.ToInt64(b, int o)

        let private cstring (b: byte[]) (o: int64) =
            let start = int o
            let mutable e = start
            while b.[e] <> 0uy do
                e <- e + 1
            Text.Encoding.ASCII.GetString(b, start, e - start)

        /// One entry of the version-needs table.
        type Requirement =
            {
                Library: string
                Version: string
                /// File offset of the entry's 16-bit flags.
                FlagsOffset: int
                Weak: bool
            }

        /// Every version the file requires, with the library it requires it from (none for a file that
        /// is not a 64-bit little-endian ELF file).
        let requirements (b: byte[]) =
            let found = ResizeArray<Requirement>()
            if
                b.Length >= 64
                && b.[0] = 0x7fuy
                && b.[1] = byte 'E'
                && b.[2] = byte 'L'
                && b.[3] = byte 'F'
                && b.[4] = 2uy
                && b.[5] = 1uy
            then
                let shoff = i64 b 0x28L
                let shentsize = int64 (u16 b 0x3AL)
                for s in 0 .. u16 b 0x3CL - 1 do
                    let sh = shoff + int64 s * shentsize
                    if u32 b (sh + 4L) = 0x6ffffffeL then // SHT_GNU_verneed; sh_link names its string table
                        let strtab = i64 b (shoff + u32 b (sh + 40L) * shentsize + 24L)
                        let mutable vn = i64 b (sh + 24L)
                        for _ in 1 .. int (u32 b (sh + 44L)) do // sh_info: the number of Verneed entries
                            let library = cstring b (strtab + u32 b (vn + 4L))
                            let mutable aux = vn + u32 b (vn + 8L)
                            for _ in 1 .. u16 b (vn + 2L) do
                                found.Add
                                    { Library = library
                                      Version = cstring b (strtab + u32 b (aux + 8L))
                                      FlagsOffset = int aux + 4
                                      Weak = u16 b (aux + 4L) &&& 0x2 <> 0 }
                                aux <- aux + u32 b (aux + 12L)
                            vn <- vn + u32 b (vn + 12L)
            found

        /// A copy of the file with every requirement of `version` marked weak (VER_FLG_WEAK, 0x2, in
        /// the low byte of the entry's flags).
        let markedWeak (version: string) (b: byte[]) =
            let copy = Array.copy b
            for r in requirements b do
                if r.Version = version then
                    copy.[r.FlagsOffset] <- copy.[r.FlagsOffset] ||| 0x2uy
            copy

    /// The libstdc++ version TorchSharp's glue asks for only for a marker symbol it never calls.
    let internal markerVersion = "GLIBCXX_3.4.32"

    let private glue = "libLibTorchSharp.so"

    let private rid = if RuntimeInformation.ProcessArchitecture = Architecture.Arm64 then "linux-arm64" else "linux-x64"

    /// The libtorch package version this build of ScoreSde was compiled against (ScoreSde.fsproj).
    let private libTorchVersion () =
        typeof<Elf.Requirement>.Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
        |> Seq.tryFind (fun a -> a.Key = "LibTorchVersion")
        |> Option.map (fun a -> a.Value)

    /// Folders that may hold TorchSharp's native libraries, in the order the runtime probes a
    /// DllImport: the app's native search folders (from its .deps.json), the app's folder, TorchSharp.dll's
    /// folder; then the NuGet package layout that F# scripts and notebooks load TorchSharp.dll from
    /// (<packages>/torchsharp/<version>/lib/<tfm>/), whose natives sit in the torchsharp and
    /// libtorch-cpu-<rid> packages' runtimes/<rid>/native folders.
    let private searchFolders () =
        let folders = ResizeArray<string>()
        let add (dir: string) =
            if not (String.IsNullOrEmpty dir) then
                let full = Path.GetFullPath dir
                if not (folders.Contains full) then
                    folders.Add full
        let native (dir: string) = Path.Combine(dir, "runtimes", rid, "native")
        match AppContext.GetData "NATIVE_DLL_SEARCH_DIRECTORIES" with
        | :? string as s ->
            for dir in s.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries) do
                add dir
        | _ -> ()
        add AppContext.BaseDirectory
        add (native AppContext.BaseDirectory)
        let torchDir = Path.GetDirectoryName(typeof<TorchSharp.torch>.Assembly.Location)
        if not (String.IsNullOrEmpty torchDir) then
            add torchDir
            add (native torchDir)
            let torchHome = Path.Combine(torchDir, "..", "..")
            if Directory.Exists(native torchHome) then
                add (native torchHome)
                match libTorchVersion () with
                | Some v -> add (native (Path.Combine(torchHome, "..", "..", "libtorch-cpu-" + rid, v)))
                | None -> ()
        folders

    let private findIn (folders: ResizeArray<string>) (file: string) =
        let mutable found = None
        for dir in folders do
            let path = Path.Combine(dir, file)
            if found.IsNone && File.Exists path then
                found <- Some path
        found

    /// The per-user cache folder for weak-marked copies: $XDG_CACHE_HOME/ScoreSde/native, else
    /// ~/.cache/ScoreSde/native.
    let internal cacheRoot () =
        let xdg = Environment.GetEnvironmentVariable "XDG_CACHE_HOME"
        let home = Environment.GetFolderPath Environment.SpecialFolder.UserProfile
        let baseDir =
            if not (String.IsNullOrEmpty xdg) && Path.IsPathRooted xdg then xdg
            elif not (String.IsNullOrEmpty home) then Path.Combine(home, ".cache")
            else invalidOp "neither XDG_CACHE_HOME nor HOME is set"
        Path.Combine(baseDir, "ScoreSde", "native")

    /// 64-bit FNV-1a over 8-byte words, then the tail bytes: a cache key, not a security check (the
    /// cached copy's content is compared in full before use). SHA-256 would cost ~40 ms here, most of
    /// it loading the crypto library.
    let private fingerprint (b: byte[]) =
        let words = MemoryMarshal.Cast<byte, uint64>(ReadOnlySpan<byte> b)
        let mutable h = 14695981039346656037UL
        for w in words do
            h <- (h ^^^ w) * 1099511628211UL
        for i in words.Length * 8 .. b.Length - 1 do
            h <- (h ^^^ uint64 b.[i]) * 1099511628211UL
        h

    /// A copy of the glue `original` (its bytes) with the marker requirement weak, in
    /// <root>/<hash>-<size>/: reused when its content is right, else written under a temporary name
    /// and renamed into place (concurrent processes write the same bytes; a reader never sees a
    /// partial file). Returns its path.
    let internal weakCopy (root: string) (original: byte[]) =
        // (no sprintf on this path: F#'s format machinery costs ~40 ms at its first use)
        let dir = Path.Combine(root, (fingerprint original).ToString "x16" + "-" + string original.Length)
        let target = Path.Combine(dir, glue)
        let patched = Elf.markedWeak markerVersion original
        let upToDate =
            File.Exists target
            && (FileInfo target).Length = int64 patched.Length
            && MemoryExtensions.SequenceEqual(ReadOnlySpan<byte>(File.ReadAllBytes target), ReadOnlySpan<byte> patched)
        if not upToDate then
            Directory.CreateDirectory dir |> ignore
            let tmp = Path.Combine(dir, String.Join(".", "", glue, Environment.ProcessId, Guid.NewGuid().ToString "N", "tmp"))
            try
                File.WriteAllBytes(tmp, patched)
                File.Move(tmp, target, true)
            finally
                if File.Exists tmp then
                    File.Delete tmp
        target

    /// Load the glue at `path`; if the dynamic loader refuses it and the file requires the marker
    /// version strongly, load a weak-marked copy from the cache instead. Trying the file first costs
    /// nothing where it loads (weak-marked by the build, or a libstdc++ from GCC 13 or later) and
    /// lets the loader itself decide whether this system's libstdc++ lacks the version.
    let private loadGlue (path: string) =
        match NativeLibrary.TryLoad path with
        | true, _ -> ()
        | false, _ ->
            let bytes = File.ReadAllBytes path
            if not (Elf.requirements bytes |> Seq.exists (fun r -> r.Version = markerVersion && not r.Weak)) then
                NativeLibrary.Load path |> ignore // refused for another reason: raise the loader's message
            let root = cacheRoot ()
            let copy =
                try
                    weakCopy root bytes
                with
                | :? IOException
                | :? UnauthorizedAccessException as e ->
                    raise (
                        InvalidOperationException(
                            sprintf
                                "%s requires %s, which this system's libstdc++ lacks, and a copy with that requirement marked weak could not be written to %s (%s). Set XDG_CACHE_HOME to a writable folder, or build the app with the ScoreSde package, whose build marks the copy in the output folder."
                                path
                                markerVersion
                                root
                                e.Message,
                            e
                        )
                    )
            NativeLibrary.Load copy |> ignore

    let private load =
        lazy
            (if RuntimeInformation.IsOSPlatform OSPlatform.Linux then
                 let folders = searchFolders ()
                 // Only with TorchSharp's own libtorch found: the glue must never bind to another one.
                 match findIn folders "libtorch.so" with
                 | None -> ()
                 | Some libtorch ->
                     let dir = Path.GetDirectoryName libtorch
                     for lib in [ "libc10.so"; "libtorch_cpu.so"; "libtorch.so" ] do
                         let path = Path.Combine(dir, lib)
                         if File.Exists path then
                             NativeLibrary.Load path |> ignore
                     findIn folders glue |> Option.iter loadGlue)

    /// Load TorchSharp's bundled libtorch and its glue by full path, with the glue's libstdc++ marker
    /// requirement made weak where the system needs it (Linux; a no-op elsewhere and after the first
    /// call). The library's entry points and the C# facade call it; call it yourself before your own
    /// first TorchSharp call in a script or an app.
    let ensureLoaded () = load.Force()
