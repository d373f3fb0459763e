module ScoreSde.Tests.DataFileTests

open System
open System.IO
open System.Text
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common

let private fixture (name: string) = Path.Combine(AppContext.BaseDirectory, "fixtures", name)

/// The fixtures' table: element (i, j) = 10 i + j + 0.25.
let private expectedTable =
    [| for i in 0..2 do
           for j in 0..1 -> 10.0 * float i + float j + 0.25 |]

/// Expect an ArgumentException naming `path` whose message contains every fragment.
let expectFileError (what: string) (fragments: string list) (f: unit -> 'a) =
    try
        f () |> ignore
        failtestf "%s: expected an ArgumentException" what
    with :? ArgumentException as e ->
        Expect.equal e.ParamName "path" (sprintf "%s: parameter name" what)
        for fragment in fragments do
            Expect.stringContains e.Message fragment (sprintf "%s: message" what)

[<Tests>]
let tests =
    testList
        "Data files"
        [ test ".npy files written by NumPy read back (C and Fortran order, float64 and float32)" {
              let c = Npy.read (fixture "c_f8.npy")
              Expect.equal c.Shape [| 3L; 2L |] "C shape"
              Expect.equal c.Dtype torch.float64 "C dtype"
              Expect.sequenceEqual c.Values expectedTable "C values"
              let f = Npy.read (fixture "fortran_f4.npy")
              Expect.equal f.Shape [| 3L; 2L |] "Fortran shape"
              Expect.equal f.Dtype torch.float32 "Fortran dtype"
              Expect.sequenceEqual f.Values expectedTable "Fortran values reordered to C order"
              use t = DataFile.load (fixture "fortran_f4.npy") torch.float64
              Expect.sequenceEqual (values t) expectedTable "loaded as a tensor"
          }

          test ".npy round trips exactly in float32 and float64, any rank" {
              use temp = tempDir "npy"
              let dir = temp.Path
              for dtype in [ torch.float32; torch.float64 ] do
                  for shape in [ [| 7L |]; [| 5L; 3L |]; [| 2L; 3L; 4L |] ] do
                      use g = generator 21L
                      use x = torch.randn (shape, dtype = dtype, generator = g)
                      let path = Path.Combine(dir, "x.npy")
                      DataFile.save path x
                      let back = Npy.read path
                      Expect.equal back.Shape shape "shape"
                      Expect.equal back.Dtype dtype "dtype"
                      Expect.sequenceEqual back.Values (values x) (sprintf "values %A %A" dtype shape)
                      // the data start is aligned to 64 bytes, as NumPy's writer does
                      let bytes = File.ReadAllBytes path
                      let headerLength = int (BitConverter.ToUInt16(bytes, 8))
                      Expect.equal ((10 + headerLength) % 64) 0 "aligned header"
          }

          test "CSV round trips exactly; a header line and comments are skipped" {
              use temp = tempDir "csv"
              let dir = temp.Path
              for dtype in [ torch.float32; torch.float64 ] do
                  use g = generator 22L
                  use x = torch.randn ([| 9L; 3L |], dtype = dtype, generator = g) * 1e3
                  let path = Path.Combine(dir, "x.csv")
                  DataFile.save path x
                  use back = DataFile.load path dtype
                  Expect.isTrue (same back x) (sprintf "round trip %A" dtype)
              let path = Path.Combine(dir, "header.csv")
              File.WriteAllText(path, "x,y\n# a comment\n1.5,-2\n\n3e-1, 4\n")
              use t = DataFile.load path torch.float64
              Expect.equal t.shape [| 2L; 2L |] "two rows after the header"
              Expect.sequenceEqual (values t) [| 1.5; -2.0; 0.3; 4.0 |] "values"
          }

          test "malformed .npy files get clear errors" {
              use temp = tempDir "npybad"
              let dir = temp.Path
              let good = File.ReadAllBytes(fixture "c_f8.npy")
              let write name (bytes: byte[]) =
                  let p = Path.Combine(dir, name)
                  File.WriteAllBytes(p, bytes)
                  p
              expectFileError "no magic" [ "not a .npy file" ] (fun () ->
                  Npy.read (write "text.npy" (Encoding.ASCII.GetBytes "hello world, not numpy")))
              expectFileError "truncated" [ "bytes of data"; "(3, 2)" ] (fun () -> Npy.read (write "short.npy" good.[.. good.Length - 5]))
              expectFileError "int64" [ "unsupported .npy dtype '<i8'" ] (fun () -> Npy.read (fixture "int64.npy"))
              expectFileError "3-D" [ "(2, 2, 2)"; "2-D array" ] (fun () -> DataFile.load (fixture "three_d.npy") torch.float32)
              let header = Encoding.ASCII.GetBytes "{'descr': '<f8', 'shape': (3, 2), }\n"
              let bad = Array.concat [ good.[..7]; BitConverter.GetBytes(uint16 header.Length); header ]
              expectFileError "missing key" [ "malformed .npy header" ] (fun () -> Npy.read (write "nokey.npy" bad))
              expectFileError "missing file" [ "no such file" ] (fun () -> Npy.read (Path.Combine(dir, "absent.npy")))
          }

          test "malformed CSV files get clear errors naming the line" {
              use temp = tempDir "csvbad"
              let dir = temp.Path
              let write name (text: string) =
                  let p = Path.Combine(dir, name)
                  File.WriteAllText(p, text)
                  p
              expectFileError "not a number" [ "line 2, column 2: 'abc' is not a number" ] (fun () ->
                  Csv.read (write "nan.csv" "1,2\n3,abc\n"))
              expectFileError "ragged" [ "line 3 has 3 columns but earlier lines have 2" ] (fun () ->
                  Csv.read (write "ragged.csv" "1,2\n3,4\n5,6,7\n"))
              expectFileError "empty" [ "holds no rows" ] (fun () -> Csv.read (write "empty.csv" "x,y\n"))
              expectFileError "non-finite" [ "row 2, column 1"; "finite" ] (fun () ->
                  DataFile.load (write "inf.csv" "1,2\nInfinity,3\n") torch.float32)
              expectFileError "extension" [ "unsupported file type '.txt'" ] (fun () ->
                  DataFile.load (write "data.txt" "1,2\n") torch.float32)
          } ]
