module ScoreSde.Tests.NativeTests

open System
open System.IO
open System.Reflection
open Expecto
open ScoreSde
open ScoreSde.Tests.Common

/// `readelf -V` of a file (binutils; installed with the C toolchain).
let readelf (path: string) =
    let code, output = DocsTests.run "readelf" [ "-V"; path ] "." (TimeSpan.FromMinutes 1.0)
    if code <> 0 then
        failtestf "readelf -V %s failed (%d): %s" path code output
    output

/// The flags readelf prints for a file's GLIBCXX_3.4.32 requirement ("none" or "WEAK").
let markerFlags (path: string) =
    match (readelf path).Split('\n') |> Array.tryFind (fun l -> l.Contains "Name: GLIBCXX_3.4.32") with
    | Some line ->
        let i = line.IndexOf "Flags: "
        line.Substring(i + 7).Split(' ').[0]
    | None -> failtestf "%s: readelf lists no GLIBCXX_3.4.32 requirement" path

/// Whether the system's libstdc++ defines GLIBCXX_3.4.32 (readelf's version definitions).
let systemHasMarkerVersion () =
    let lib =
        [ "/lib/x86_64-linux-gnu/libstdc++.so.6"
          "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
          "/usr/lib64/libstdc++.so.6" ]
        |> List.tryFind File.Exists
    match lib with
    | Some l -> (readelf l).Contains "Name: GLIBCXX_3.4.32"
    | None -> failtest "libstdc++.so.6 not found in the usual folders"

/// The NuGet global packages folder.
let nugetPackages () =
    match Environment.GetEnvironmentVariable "NUGET_PACKAGES" with
    | null
    | "" -> Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".nuget", "packages")
    | p -> p

/// TorchSharp's package version, from the referenced assembly (its informational version).
let torchSharpVersion () =
    let v = typeof<TorchSharp.torch>.Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>().InformationalVersion
    v.Split('+').[0]

/// TorchSharp's glue as the package ships it (the NuGet cache copy, never modified).
let originalGlue () =
    Path.Combine(nugetPackages (), "torchsharp", torchSharpVersion (), "runtimes", "linux-x64", "native", "libLibTorchSharp.so")

let private outputGlue = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so")

/// readelf -V's version-needs lines as (library, version, weak), in file order.
let private readelfRequirements (path: string) =
    let mutable inNeeds = false
    let mutable library = ""
    [ for line in (readelf path).Split('\n') do
          let l = line.Trim()
          if l.StartsWith "Version " && l.Contains " section " then
              inNeeds <- l.StartsWith "Version needs section"
          elif inNeeds && l.Contains "File: " then
              library <- l.Substring(l.IndexOf "File: " + 6).Split(' ').[0]
          elif inNeeds && l.Contains "Name: " then
              let name = l.Substring(l.IndexOf "Name: " + 6).Split(' ').[0]
              let flags = l.Substring(l.IndexOf "Flags: " + 7).Split(' ').[0]
              library, name, flags = "WEAK" ]

[<Tests>]
let tests =
    testList
        "Native loading"
        [ test "the build marks GLIBCXX_3.4.32 weak in the output copy of libLibTorchSharp.so" {
              Expect.isTrue (File.Exists outputGlue) (sprintf "%s exists" outputGlue)
              Expect.equal (markerFlags outputGlue) "WEAK" "weak requirement in the output folder"
          }

          test "the NuGet cache copy is left untouched" {
              let original = originalGlue ()
              Expect.isTrue (File.Exists original) (sprintf "%s exists" original)
              Expect.equal (markerFlags original) "none" "cache copy unchanged"
          }

          test "the run-time ELF reader lists the glue's version requirements as readelf does" {
              for path in [ originalGlue (); outputGlue ] do
                  let ours =
                      Native.Elf.requirements (File.ReadAllBytes path)
                      |> Seq.map (fun r -> r.Library, r.Version, r.Weak)
                      |> List.ofSeq
                  Expect.isGreaterThan ours.Length 10 (sprintf "%s: requirements found" path)
                  Expect.sequenceEqual ours (readelfRequirements path) (sprintf "%s: same as readelf -V" path)
          }

          test "the run-time marking gives the build task's bytes, changing one byte" {
              // Two implementations (the F# one in Native.fs, the C# MSBuild task in
              // src/ScoreSde/buildTransitive) must agree byte for byte on the shipped glue.
              let original = File.ReadAllBytes(originalGlue ())
              let marked = Native.Elf.markedWeak Native.markerVersion original
              Expect.isTrue (marked = File.ReadAllBytes outputGlue) "same bytes as the output folder's copy"
              let changed = Array.map2 (fun a b -> a <> b) original marked |> Array.filter id |> Array.length
              Expect.equal changed 1 "one flags byte differs from the original"
              Expect.isFalse (obj.ReferenceEquals(original, marked)) "a copy, the input is left alone"
          }

          test "the cache copy is written once, atomically, checked on reuse, and keyed by the original" {
              use temp = tempDir "nativecache"
              let root = temp.Path
              let original = File.ReadAllBytes(originalGlue ())
              let expected = Native.Elf.markedWeak Native.markerVersion original
              let path = Native.weakCopy root original
              Expect.equal (Path.GetFileName path) "libLibTorchSharp.so" "file name (the SONAME)"
              Expect.isTrue (File.ReadAllBytes path = expected) "weak-marked content"
              Expect.equal (markerFlags path) "WEAK" "readelf sees the requirement weak"
              let folder = Path.GetDirectoryName path
              Expect.sequenceEqual (Directory.GetFiles folder) [| path |] "no temporary file left beside it"
              Expect.stringEnds folder (sprintf "-%d" original.Length) "keyed by size (and hash)"
              let written = File.GetLastWriteTimeUtc path
              Threading.Thread.Sleep 20
              Expect.equal (Native.weakCopy root original) path "reused"
              Expect.equal (File.GetLastWriteTimeUtc path) written "not rewritten when its content is right"
              File.WriteAllBytes(path, [| 1uy; 2uy; 3uy |])
              Expect.equal (Native.weakCopy root original) path "same place"
              Expect.isTrue (File.ReadAllBytes path = expected) "a damaged copy is rewritten"
              // Another TorchSharp build (here: one byte of code changed) gets its own folder.
              let other = Array.copy original
              let middle = other.Length / 2
              other.[middle] <- other.[middle] ^^^ 0xffuy
              let otherPath = Native.weakCopy root other
              Expect.notEqual (Path.GetDirectoryName otherPath) folder "a changed original gets another folder"
              Expect.equal (Directory.GetDirectories root).Length 2 "two cached versions side by side"
          }

          test "the process runs on TorchSharp's bundled libtorch 2.10, not a system libtorch" {
              use x = TorchSharp.torch.ones (3L)
              Expect.equal (scalar (x.sum ())) 3.0 "torch works"
              let maps = File.ReadAllLines "/proc/self/maps"
              let torchLibs =
                  maps
                  |> Array.choose (fun l -> let i = l.IndexOf '/' in if i >= 0 then Some(l.Substring i) else None)
                  |> Array.filter (fun p -> Path.GetFileName(p).StartsWith "libtorch" || Path.GetFileName(p).StartsWith "libc10")
                  |> Array.distinct
              Expect.isNonEmpty torchLibs "libtorch is mapped"
              let ours = Path.Combine(AppContext.BaseDirectory, "runtimes")
              for p in torchLibs do
                  Expect.isTrue (p.StartsWith ours) (sprintf "%s comes from the bundled runtimes folder" p)
          } ]
