module ScoreSde.Tests.FormatTests

open System
open Expecto

/// The F# sources are kept in Fantomas's format (settings in .editorconfig); `dotnet fantomas src tests
/// docs build.fsx` formats them.
[<Tests>]
let tests =
    testList
        "Format"
        [ test "F# sources are formatted by Fantomas" {
              let code, output =
                  DocsTests.run
                      "dotnet"
                      [ "fantomas"; "--check"; "src"; "tests"; "docs"; "build.fsx" ]
                      DocsTests.repoRoot
                      (TimeSpan.FromMinutes 5.0)
              if code <> 0 then
                  failtestf
                      "dotnet fantomas --check found unformatted files (exit %d); run `dotnet fantomas src tests docs build.fsx`:\n%s"
                      code
                      output
          } ]
