/// The library as its users get it: `dotnet pack`, then outside the repository (a temporary folder, so
/// the repository's Directory.Build.* files do not apply) a C# console app that references the package
/// from a local folder feed, one that references the project, and an F# script with `#r "nuget: ..."`.
module ScoreSde.Tests.ConsumerTests

open System
open System.Diagnostics
open System.IO
open System.IO.Compression
open System.Xml.Linq
open Expecto
open ScoreSde.Tests.Common
open ScoreSde.Tests.NativeTests

/// Packing needs no build: the library's outputs in the tests' configuration exist.
let private configuration = buildConfiguration

/// Run a process to completion with extra environment variables; returns the exit code and the
/// combined output. MSBuild variables inherited from `dotnet run` are removed, as in a user's shell.
/// TMPDIR points into the test's own folder: the dotnet CLI leaves empty temporary folders behind
/// (two per command), and they go with the test's folder.
let private exec (tmp: string) (workDir: string) (env: (string * string) list) (file: string) (args: string list) =
    let psi =
        ProcessStartInfo(file, args, WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true)
    for key in List.ofSeq psi.Environment.Keys do
        if key.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) && key <> "MSBUILDDISABLENODEREUSE" then
            psi.Environment.Remove key |> ignore
    psi.Environment.["DOTNET_CLI_TELEMETRY_OPTOUT"] <- "1"
    psi.Environment.["DOTNET_NOLOGO"] <- "1"
    psi.Environment.["TMPDIR"] <- Directory.CreateDirectory(tmp).FullName
    for k, v in env do
        psi.Environment.[k] <- v
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    if not (p.WaitForExit(int (TimeSpan.FromMinutes 5.0).TotalMilliseconds)) then
        p.Kill true
        failtestf "%s %s timed out" file (String.Join(" ", args))
    p.WaitForExit()
    p.ExitCode, out.Result + err.Result

/// Run and require exit code 0; returns the output.
let private execOk (tmp: string) (workDir: string) (env: (string * string) list) (file: string) (args: string list) =
    let code, output = exec tmp workDir env file args
    if code <> 0 then
        failtestf "%s %s (in %s) exited with %d:\n%s" file (String.Join(" ", args)) workDir code output
    output

/// Seconds taken by `f`, with its result.
let private timed (f: unit -> 'a) =
    let sw = Stopwatch.StartNew()
    let r = f ()
    r, sw.Elapsed.TotalSeconds

/// The README's C# example, as printed under "## C# example" (the first csharp block there).
let readmeExample () =
    let lines = File.ReadAllLines(Path.Combine(DocsTests.repoRoot, "README.md"))
    let heading = lines |> Array.findIndex (fun l -> l.StartsWith "## C# example")
    let start = Array.FindIndex(lines, heading, fun l -> l.StartsWith "```csharp")
    let stop = Array.FindIndex(lines, start + 1, fun l -> l.StartsWith "```")
    String.Join("\n", lines.[start + 1 .. stop - 1])

/// What the test adds to the example: the `MyModel` it calls, and lines that print the result's spread
/// and which copy of TorchSharp's glue the process loaded.
let private additions =
    """

// ---- added by the test ----
// The data are N(0, I): every marginal of the VP-SDE (beta 0.1 .. 20) is N(0, I) too, so the exact
// noise prediction is sigma_t x with sigma_t^2 = 1 - alpha_t^2, log alpha_t = -t^2 (20 - 0.1) / 4 - 0.1 t / 2.
Console.WriteLine($"std {x.std().item<float>():F4} {result.Samples.std().item<float>():F4}");
Console.WriteLine("glue " + File.ReadLines("/proc/self/maps").Where(l => l.Contains("libLibTorchSharp")).Select(l => l.Substring(l.IndexOf('/'))).First());

static Tensor MyModel(Tensor x, Tensor t)
{
    using var scope = NewDisposeScope();
    var tc = t.reshape(-1, 1, 1, 1).to_type(x.dtype);
    var logAlpha = -0.25 * tc * tc * (20.0 - 0.1) - 0.5 * tc * 0.1;
    return ((1.0 - (2.0 * logAlpha).exp()).sqrt() * x).MoveToOuterDisposeScope();
}
"""

/// The F# script: the package by `#r "nuget: ..."` from the folder feed, a DPM-Solver run on N(0, I)
/// data in 2-D with the exact model, the samples' spread and the glue in use.
let private script (feed: string) (version: string) =
    $"""#i "nuget: {feed}"
#r "nuget: ScoreSde, {version}"

open TorchSharp
open ScoreSde

Native.ensureLoaded ()
let sde = Sde.standardVp
// N(0, I) data: the exact noise prediction is sigma_t x, sigma_t^2 = 1 - exp(-t^2 (20 - 0.1) / 2 - 0.1 t).
let model =
    Model.noise (fun x t ->
        let tc = t.reshape (-1L, 1L)
        (1.0 - (tc * tc * -9.95 - tc * 0.1).exp ()).sqrt () * x)
let g = new torch.Generator(7UL, torch.CPU)
let noise = Noise.fromGenerator g
let xT = Sampler.prior sde [| 4000L; 2L |] torch.float64 torch.CPU noise
let r = Sampler.sample sde model Sampling.dpmSolver noise xT
printfn "std %%.4f" (r.Samples.std().item<float> ())
printfn "glue %%s" (System.IO.File.ReadLines "/proc/self/maps" |> Seq.find (fun l -> l.Contains "libLibTorchSharp") |> fun l -> l.Substring(l.IndexOf '/'))
"""

/// The value after `label ` on the output line starting with it.
let private field (output: string) (label: string) =
    match output.Split('\n') |> Array.tryFind (fun l -> l.StartsWith(label + " ")) with
    | Some l -> l.Substring(label.Length + 1).Trim()
    | None -> failtestf "no '%s' line in the output:\n%s" label output

/// Every standard deviation on the "std" line is within 0.05 of 1. The samples are N(0, 1) up to the
/// samplers' discretisation error: with 12,288 to 49,152 values the standard error of a standard
/// deviation is 0.003 to 0.007, so 0.05 leaves room for the 20- to 1000-step discretisation bias.
let private expectUnitSpread (what: string) (output: string) =
    for s in (field output "std").Split(' ') do
        let v = Double.Parse(s, Globalization.CultureInfo.InvariantCulture)
        Expect.isLessThan (abs (v - 1.0)) 0.05 (sprintf "%s: sample std %g is 1 within 0.05:\n%s" what v output)

/// Pack ScoreSde and ScoreSde.CSharp (already built) into `feed` with `version`; the nuspec files go
/// to `scratch`, not to the repository's obj folders.
let pack (tmp: string) (feed: string) (scratch: string) (version: string) =
    for project in [ "src/ScoreSde/ScoreSde.fsproj"; "src/ScoreSde.CSharp/ScoreSde.CSharp.csproj" ] do
        execOk
            tmp
            DocsTests.repoRoot
            []
            "dotnet"
            [ "pack"
              project
              "-c"
              configuration
              "--no-build"
              "-o"
              feed
              "-p:PackageVersion=" + version
              "-p:NuspecOutputPath=" + scratch + "/" ]
        |> ignore

/// A version no earlier run used, so NuGet cannot serve a stale copy from its global packages folder.
let private uniqueVersion () = sprintf "0.1.0-ci.%s.%d" (DateTime.UtcNow.ToString "yyyyMMddHHmmss") Environment.ProcessId

/// Remove what restoring `version` put into the NuGet global packages folder and F# Interactive's
/// restore cache (never anything else: TorchSharp and libtorch stay).
let private forgetVersion (version: string) =
    for id in [ "scoresde"; "scoresde.csharp" ] do
        let dir = Path.Combine(nugetPackages (), id)
        let versionDir = Path.Combine(dir, version)
        if Directory.Exists versionDir then
            Directory.Delete(versionDir, true)
        if Directory.Exists dir && Directory.GetFileSystemEntries(dir).Length = 0 then
            Directory.Delete dir
    let fsiCache =
        Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".packagemanagement", "nuget", "Cache")
    if Directory.Exists fsiCache then
        for f in Directory.GetFiles fsiCache do
            if (File.ReadAllText f).Contains version then
                File.Delete f

[<Tests>]
let tests =
    testList
        "Consumers"
        [ test "dotnet pack makes packages with metadata, docs, symbols, exact TorchSharp/libtorch pins and the build fix" {
              use temp = tempDir "pack"
              let version = uniqueVersion ()
              let feed = Path.Combine(temp.Path, "feed")
              pack (Path.Combine(temp.Path, "tmp")) feed (Path.Combine(temp.Path, "nuspec")) version
              for id in [ "ScoreSde"; "ScoreSde.CSharp" ] do
                  let nupkg = Path.Combine(feed, sprintf "%s.%s.nupkg" id version)
                  Expect.isTrue (File.Exists nupkg) (sprintf "%s packed" nupkg)
                  Expect.isTrue (File.Exists(Path.ChangeExtension(nupkg, ".snupkg"))) (sprintf "%s: symbols package" id)
                  use zip = ZipFile.OpenRead nupkg
                  let entries = zip.Entries |> Seq.map (fun e -> e.FullName) |> Set.ofSeq
                  let nuspec =
                      use s = zip.GetEntry(id + ".nuspec").Open()
                      XDocument.Load s
                  let meta name =
                      nuspec.Descendants()
                      |> Seq.tryFind (fun e -> e.Name.LocalName = name)
                      |> Option.map (fun e -> e.Value)
                  for name in [ "description"; "tags"; "projectUrl"; "readme"; "license"; "authors" ] do
                      Expect.isTrue (meta name |> Option.exists (fun v -> v.Trim() <> "")) (sprintf "%s: %s set" id name)
                  Expect.equal (meta "license") (Some "MIT") (sprintf "%s: MIT license expression" id)
                  Expect.isTrue (entries.Contains "README.md") (sprintf "%s: readme inside" id)
                  Expect.isTrue (entries.Contains(sprintf "lib/net10.0/%s.xml" id)) (sprintf "%s: XML docs" id)
                  let dependencies =
                      nuspec.Descendants()
                      |> Seq.filter (fun e -> e.Name.LocalName = "dependency")
                      |> Seq.map (fun e -> e.Attribute(XName.Get "id").Value, e.Attribute(XName.Get "version").Value)
                      |> Map.ofSeq
                  Expect.equal (dependencies.TryFind "TorchSharp") (Some "[0.107.0]") (sprintf "%s: TorchSharp exactly 0.107.0" id)
                  Expect.equal
                      (dependencies.TryFind "libtorch-cpu-linux-x64")
                      (Some "[2.10.0]")
                      (sprintf "%s: libtorch-cpu-linux-x64 exactly 2.10.0" id)
                  if id = "ScoreSde" then
                      Expect.isTrue (entries.Contains "buildTransitive/ScoreSde.targets") "the build fix's targets"
                      Expect.isTrue (entries.Contains "buildTransitive/MarkVersionWeak.cs") "the build fix's task"
                  else
                      Expect.equal (dependencies.TryFind "ScoreSde") (Some version) "ScoreSde.CSharp depends on the same ScoreSde"
          }

          test "a C# app by package or project reference and an F# script by #r nuget run on this system" {
              let version = uniqueVersion ()
              let lacksVersion = not (systemHasMarkerVersion ())
              use temp = tempDir "consumers"
              let root = temp.Path
              let feed = Path.Combine(root, "feed")
              let tmp = Path.Combine(root, "tmp")
              let timings = ResizeArray<string>()
              let time what f =
                  let r, s = timed f
                  timings.Add(sprintf "%s %.1f s" what s)
                  r
              try
                  time "pack" (fun () -> pack tmp feed (Path.Combine(root, "nuspec")) version)
                  // Only the folder feed: TorchSharp, libtorch and FSharp.Core come from the global packages folder.
                  File.WriteAllText(
                      Path.Combine(root, "nuget.config"),
                      $"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="local" value="{feed}" />
  </packageSources>
</configuration>
"""
                  )
                  let program = readmeExample () + additions
                  let newApp name =
                      execOk tmp root [] "dotnet" [ "new"; "console"; "-o"; name ] |> ignore
                      let dir = Path.Combine(root, name)
                      dir
                  let runApp (dir: string) (cache: string) =
                      let dll = Path.Combine(dir, "bin", configuration, "net10.0", Path.GetFileName dir + ".dll")
                      execOk tmp dir [ "XDG_CACHE_HOME", cache ] "dotnet" [ dll ]
                  let binGlue (dir: string) =
                      Path.Combine(dir, "bin", configuration, "net10.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so")

                  /// Build the app with the example, check its output folder's glue, run it; the output.
                  let buildAndRun (what: string) (dir: string) (buildArgs: string list) (glueFlags: string) (cache: string) =
                      File.WriteAllText(Path.Combine(dir, "Program.cs"), program)
                      time (what + ": build") (fun () ->
                          execOk tmp dir [] "dotnet" ([ "build"; "-c"; configuration; "-p:UseSharedCompilation=false" ] @ buildArgs)
                          |> ignore)
                      Expect.equal (markerFlags (binGlue dir)) glueFlags (sprintf "%s: the output folder's glue" what)
                      let out = time (what + ": run") (fun () -> runApp dir cache)
                      Expect.stringContains out "16 samples, 2000 model evaluations" (what + ": the example's line")
                      expectUnitSpread what out
                      out

                  // 1. By package: the package's build targets mark the glue in the output folder.
                  let pkg =
                      time "package app: new + add package" (fun () ->
                          let dir = newApp "PkgApp"
                          execOk tmp dir [] "dotnet" [ "add"; "package"; "ScoreSde.CSharp"; "--version"; version ] |> ignore
                          dir)
                  let pkgCache = Path.Combine(root, "cache-pkg")
                  let out = buildAndRun "package app" pkg [] "WEAK" pkgCache
                  Expect.equal (field out "glue") (binGlue pkg) "package app: the output folder's glue is loaded"
                  Expect.isFalse (Directory.Exists pkgCache) "package app: no run-time copy needed"

                  // 2. By project reference: no package targets run, the output copy is the original, and
                  //    ScoreSde.Native loads a weak-marked copy from the cache where the system needs one.
                  //    The referenced projects are built (the test project depends on them): their
                  //    outputs are left alone.
                  let refApp =
                      time "project-reference app: new + add reference" (fun () ->
                          let dir = newApp "RefApp"
                          let project = Path.Combine(DocsTests.repoRoot, "src", "ScoreSde.CSharp", "ScoreSde.CSharp.csproj")
                          execOk tmp dir [] "dotnet" [ "add"; "reference"; project ] |> ignore
                          dir)
                  let refCache = Path.Combine(root, "cache-ref")
                  let out = buildAndRun "project-reference app" refApp [ "-p:BuildProjectReferences=false" ] "none" refCache
                  let glue = field out "glue"
                  if lacksVersion then
                      Expect.stringStarts glue (Path.Combine(refCache, "ScoreSde", "native")) "project-reference app: the cached copy"
                      Expect.equal (markerFlags glue) "WEAK" "project-reference app: the cached copy is weak-marked"
                      Expect.sequenceEqual (Directory.GetFiles(Path.GetDirectoryName glue)) [| glue |] "no temporary files left"
                  else
                      Expect.equal glue (binGlue refApp) "a libstdc++ with GLIBCXX_3.4.32 loads the original"

                  // 3. An F# script: TorchSharp is loaded from the NuGet cache, which stays untouched.
                  let scriptDir = Directory.CreateDirectory(Path.Combine(root, "script")).FullName
                  File.WriteAllText(Path.Combine(scriptDir, "run.fsx"), script feed version)
                  let fsiCache = Path.Combine(root, "cache-fsi")
                  let out =
                      time "F# script: restore + run" (fun () ->
                          execOk tmp scriptDir [ "XDG_CACHE_HOME", fsiCache ] "dotnet" [ "fsi"; "--quiet"; "run.fsx" ])
                  expectUnitSpread "F# script" out
                  let glue = field out "glue"
                  if lacksVersion then
                      Expect.stringStarts glue (Path.Combine(fsiCache, "ScoreSde", "native")) "F# script: the cached copy"
                  Expect.equal (markerFlags (originalGlue ())) "none" "the NuGet cache copy is unchanged"
                  // TorchSharp's own fallback for scripts copies every native library into
                  // <packages>/torchsharp/<version>/lib/<tfm>/cpu: it must not have been needed.
                  for d in Directory.GetDirectories(Path.Combine(nugetPackages (), "torchsharp", torchSharpVersion (), "lib")) do
                      Expect.isFalse (Directory.Exists(Path.Combine(d, "cpu"))) (sprintf "no %s/cpu folder in the NuGet cache" d)
              finally
                  forgetVersion version
                  printfn
                      "Consumer test (the system's libstdc++ %s GLIBCXX_3.4.32): %s"
                      (if lacksVersion then "lacks" else "has")
                      (String.Join(", ", timings))
          } ]
