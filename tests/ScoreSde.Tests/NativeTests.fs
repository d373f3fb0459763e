module ScoreSde.Tests.NativeTests

open System
open System.IO
open Expecto
open ScoreSde.Tests.Common

/// `readelf -V` of a file (binutils; installed with the C toolchain).
let private versionInfo (path: string) =
    let code, output = DocsTests.run "readelf" [ "-V"; path ] "." (TimeSpan.FromMinutes 1.0)
    if code <> 0 then
        failtestf "readelf -V %s failed (%d): %s" path code output
    output

let private requirementLine (info: string) = info.Split('\n') |> Array.tryFind (fun l -> l.Contains "Name: GLIBCXX_3.4.32")

[<Tests>]
let tests =
    testList
        "Native loading"
        [ test "the build marks GLIBCXX_3.4.32 weak in the output copy of libLibTorchSharp.so" {
              let output = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so")
              Expect.isTrue (File.Exists output) (sprintf "%s exists" output)
              match requirementLine (versionInfo output) with
              | Some line -> Expect.stringContains line "Flags: WEAK" "weak requirement in the output folder"
              | None -> failtest "the GLIBCXX_3.4.32 requirement should still be listed (only flagged weak)"
          }

          test "the NuGet cache copy is left untouched" {
              let cache =
                  match Environment.GetEnvironmentVariable "NUGET_PACKAGES" with
                  | null
                  | "" -> Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".nuget", "packages")
                  | p -> p
              let original = Path.Combine(cache, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so")
              Expect.isTrue (File.Exists original) (sprintf "%s exists" original)
              match requirementLine (versionInfo original) with
              | Some line -> Expect.stringContains line "Flags: none" "cache copy unchanged"
              | None -> failtest "cache copy lists GLIBCXX_3.4.32"
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
