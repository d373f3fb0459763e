module ScoreSde.Tests.TimeGridTests

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open ScoreSde
open ScoreSde.Tests.Common

let private sde = Sde.standardVp

[<Tests>]
let tests =
    testList
        "Time grids"
        [ testPropertyWithConfig
              propConfig
              "every grid runs from T down to eps, strictly decreasing, N + 1 points"
              (fun (SdeParams sde) (PositiveInt steps) (Time e) ->
                  let steps = 1 + steps % 300
                  let eps = min e 0.5
                  for grid in [ TimeGrid.Uniform; TimeGrid.Quadratic; TimeGrid.LogSnr ] do
                      let ts = TimeGrid.points sde grid steps eps
                      Expect.equal ts.Length (steps + 1) (sprintf "%A: length" grid)
                      Expect.equal ts.[0] sde.T (sprintf "%A: starts at T" grid)
                      Expect.equal ts.[steps] eps (sprintf "%A: ends at eps" grid)
                      for i in 1..steps do
                          Expect.isLessThan ts.[i] ts.[i - 1] (sprintf "%A: decreasing at %d (steps %d, eps %g)" grid i steps eps))

          test "uniform, quadratic and logSNR grids are uniform in t, sqrt t and lambda" {
              let steps, eps = 17, 1e-3
              let check name (f: float -> float) (ts: float[]) =
                  let d = Array.init steps (fun i -> f ts.[i + 1] - f ts.[i])
                  for v in d do
                      closeRel 1e-9 v d.[0] (sprintf "%s spacing" name)
              check "uniform" id (TimeGrid.points sde TimeGrid.Uniform steps eps)
              check "quadratic" sqrt (TimeGrid.points sde TimeGrid.Quadratic steps eps)
              check "logSNR" (Sde.lambdaAt sde) (TimeGrid.points sde TimeGrid.LogSnr steps eps)
          }

          test "explicit grids are validated" {
              let bad =
                  [ [| 1.0 |], "grid"
                    [| 0.5; 0.7 |], "grid[1]"
                    [| 1.0; 0.5; 0.5 |], "grid[2]"
                    [| 1.0; 0.0 |], "grid[1]"
                    [| 1.5; 0.5 |], "grid[0]"
                    [| 1.0; nan |], "grid[1]" ]
              for g, name in bad do
                  try
                      TimeGrid.points sde (TimeGrid.Explicit g) 0 0.0 |> ignore
                      failtestf "expected an error for %A" g
                  with :? ArgumentException as e ->
                      Expect.equal e.ParamName name (sprintf "parameter of %A" g)
              Expect.sequenceEqual (TimeGrid.points sde (TimeGrid.Explicit [| 1.0; 0.3; 0.01 |]) 0 0.0) [| 1.0; 0.3; 0.01 |] "valid grid"
          }

          test "steps and eps are validated" {
              Expect.throwsT<ArgumentException> (fun () -> TimeGrid.points sde TimeGrid.Uniform 0 1e-3 |> ignore) "steps 0"
              Expect.throwsT<ArgumentException> (fun () -> TimeGrid.points sde TimeGrid.Uniform 10 0.0 |> ignore) "eps 0"
              Expect.throwsT<ArgumentException> (fun () -> TimeGrid.points sde TimeGrid.Uniform 10 1.0 |> ignore) "eps 1"
              Expect.throwsT<ArgumentException> (fun () -> TimeGrid.points sde TimeGrid.LogSnr 10 nan |> ignore) "eps NaN"
          } ]
