module ScoreSde.Tests.ImageDataTests

open System
open System.IO
open System.IO.Compression
open Expecto
open TorchSharp
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DataFileTests

let private fixture (name: string) = Path.Combine(AppContext.BaseDirectory, "fixtures", name)

/// The level the image fixtures hold at (n, c, h, w) (see fixtures/make_image_fixtures.py).
let private fixtureLevel n c h w = float ((n * 50 + c * 20 + h * 5 + w) % 256)

/// IDX bytes written by hand (big-endian sizes), independently of Idx.encode.
let private idxBytes (typeByte: byte) (dims: int list) (data: byte[]) =
    [| yield! [| 0uy; 0uy; typeByte; byte dims.Length |]
       for d in dims do
           yield! [| byte (d >>> 24); byte (d >>> 16); byte (d >>> 8); byte d |]
       yield! data |]

let private gzip (bytes: byte[]) =
    use out = new MemoryStream()
    (use gz = new GZipStream(out, CompressionLevel.Optimal, true)
     gz.Write(bytes, 0, bytes.Length))
    out.ToArray()

let private writeFile (dir: string) (name: string) (bytes: byte[]) =
    let p = Path.Combine(dir, name)
    File.WriteAllBytes(p, bytes)
    p

/// A tiny MNIST-format split: n images of h x w with pixel (i, y, x) = (7 i + 3 y + x) % 256, labels i % 10.
let writeSplit (dir: string) (prefix: string) (n: int) (h: int) (w: int) (gz: bool) =
    let pixels =
        [| for i in 0 .. n - 1 do
               for y in 0 .. h - 1 do
                   for x in 0 .. w - 1 -> byte ((7 * i + 3 * y + x) % 256) |]
    let wrap b = if gz then gzip b else b
    let suffix = if gz then ".gz" else ""
    writeFile dir (prefix + "-images-idx3-ubyte" + suffix) (wrap (idxBytes 8uy [ n; h; w ] pixels))
    |> ignore
    writeFile dir (prefix + "-labels-idx1-ubyte" + suffix) (wrap (idxBytes 8uy [ n ] (Array.init n (fun i -> byte (i % 10)))))
    |> ignore

[<Tests>]
let tests =
    testList
        "Image data"
        [ test "IDX files read back, gzipped or not, whatever their name" {
              use dirTemp = tempDir "idx"
              let dir = dirTemp.Path
              let data = Array.init (3 * 4 * 5) byte
              for gz in [ false; true ] do
                  let raw = idxBytes 8uy [ 3; 4; 5 ] data
                  let p = writeFile dir (if gz then "a.idx" else "b.gz") (if gz then gzip raw else raw)
                  let a = Idx.read p
                  Expect.equal a.Dims [| 3; 4; 5 |] "dims"
                  Expect.equal a.Data data "data"
              // Idx.write agrees with the hand-written layout, compressed or not
              let p = Path.Combine(dir, "w.idx")
              Idx.write p [| 3; 4; 5 |] data
              Expect.equal (File.ReadAllBytes p) (idxBytes 8uy [ 3; 4; 5 ] data) "written bytes"
              let pz = Path.Combine(dir, "w.idx.gz")
              Idx.write pz [| 3; 4; 5 |] data
              Expect.equal (Idx.read pz).Data data "gzipped write reads back"
          }

          test "malformed IDX files are rejected naming the file and the problem" {
              use dirTemp = tempDir "idxbad"
              let dir = dirTemp.Path
              let good = idxBytes 8uy [ 2; 3; 3 ] (Array.zeroCreate 18)
              let check name (bytes: byte[]) (fragments: string list) (read: string -> IdxArray) =
                  let p = writeFile dir name bytes
                  expectFileError name (p :: fragments) (fun () -> read p)
              check "magic" (Array.append [| 1uy; 0uy |] good.[2..]) [ "bad magic number" ] Idx.read
              check "type" (Array.concat [ [| 0uy; 0uy; 0x42uy |]; good.[3..] ]) [ "unknown IDX element type 0x42" ] Idx.read
              check "float" (idxBytes 0x0Duy [ 2 ] (Array.zeroCreate 8)) [ "float elements"; "only unsigned-byte" ] Idx.read
              check "short" [| 0uy; 0uy |] [ "shorter than the 4-byte magic" ] Idx.read
              check "header" good.[..9] [ "truncated header" ] Idx.read
              check "truncated" good.[.. good.Length - 2] [ "truncated data"; "need 18 bytes"; "holds 17" ] Idx.read
              check "trailing" (Array.append good [| 9uy |]) [ "1 bytes after the data" ] Idx.read
              check "gzip" (gzip good).[..20] [ "truncated or corrupt gzip" ] Idx.read
              check "labels as images" (idxBytes 8uy [ 4 ] (Array.zeroCreate 4)) [ "holds 1 dimensions"; "have 3" ] Idx.readImages
              check "images as labels" good [ "holds 3 dimensions"; "have 1" ] Idx.readLabels
              expectFileError "missing" [ "no such file" ] (fun () -> Idx.read (Path.Combine(dir, "absent")))
              let labels = writeFile dir "labels" (idxBytes 8uy [ 3 ] [| 0uy; 1uy; 2uy |])
              let images = writeFile dir "images" good
              expectFileError "counts" [ labels; "3 labels"; "holds 2 images" ] (fun () -> ImageSet.ofIdx images (Some labels))
          }

          test "a Fashion-MNIST directory loads both splits; a missing one says how to install it" {
              use dirTemp = tempDir "fmnist"
              let dir = dirTemp.Path
              writeSplit dir "train" 5 4 3 true
              writeSplit dir "t10k" 2 4 3 false
              use train = FashionMnist.load dir Split.Train
              use test = FashionMnist.load dir Split.Test
              Expect.equal train.Levels.shape [| 5L; 1L; 4L; 3L |] "train shape"
              Expect.equal test.Levels.shape [| 2L; 1L; 4L; 3L |] "test shape"
              Expect.equal train.Labels (Some [| 0L; 1L; 2L; 3L; 4L |]) "labels"
              Expect.equal test.Levels.dtype torch.uint8 "uint8 levels"
              let expected =
                  [| for i in 0..4 do
                         for y in 0..3 do
                             for x in 0..2 -> float ((7 * i + 3 * y + x) % 256) |]
              Expect.sequenceEqual (values train.Levels) expected "pixel levels in order"
              use emptyTemp = tempDir "fmnist-empty"
              let empty = emptyTemp.Path
              try
                  FashionMnist.load empty Split.Test |> ignore
                  failtest "expected an error"
              with :? ArgumentException as e ->
                  Expect.stringContains e.Message "apt-get install dataset-fashion-mnist" "install hint"
                  Expect.stringContains e.Message "t10k-images-idx3-ubyte" "missing file named"
                  Expect.isFalse (e.Message.Contains '\n') "one line"
          }

          test ".npy images: uint8 N x H x W and float N x C x H x W on the 8-bit grid; off-grid floats rejected" {
              use a = ImageSet.ofNpy (fixture "images_u1_nhw.npy")
              Expect.equal a.Levels.shape [| 3L; 1L; 4L; 5L |] "N x H x W gets one channel"
              let ea =
                  [| for n in 0..2 do
                         for h in 0..3 do
                             for w in 0..4 -> fixtureLevel n 0 h w |]
              Expect.sequenceEqual (values a.Levels) ea "uint8 levels"
              use b = ImageSet.ofNpy (fixture "images_f4_nchw.npy")
              Expect.equal b.SampleShape [| 3L; 4L; 5L |] "sample shape"
              let eb =
                  [| for n in 0..1 do
                         for c in 0..2 do
                             for h in 0..3 do
                                 for w in 0..4 -> fixtureLevel n c h w |]
              Expect.sequenceEqual (values b.Levels) eb "float levels / 255 back to levels"
              expectFileError "off grid" [ "k / 255" ] (fun () -> ImageSet.ofNpy (fixture "images_f8_offgrid.npy"))
              expectFileError "2-D" [ "N x C x H x W or N x H x W" ] (fun () -> ImageSet.ofNpy (fixture "c_f8.npy"))
          }

          test "pixel ranges: every level maps to b/255 or 2b/255 - 1 and back; uniform density scores 8 bits/dim" {
              use levels = torch.arange(256L, dtype = torch.int64).to_type(torch.uint8)
              for range, expected in [ PixelRange.ZeroOne, (fun b -> b / 255.0); PixelRange.Centred, (fun b -> 2.0 * b / 255.0 - 1.0) ] do
                  use x = Pixels.toModel range torch.float64 levels
                  Array.iteri (fun b v -> close 1e-15 v (expected (float b)) (sprintf "%A level %d" range b)) (values x)
                  use x32 = Pixels.toModel range torch.float32 levels
                  use back = Pixels.toLevels range x32
                  Expect.isTrue (same back levels) (sprintf "%A: toLevels inverts toModel" range)
                  // a model uniform on the range has density 1 / width per dimension; the dequantised
                  // data are then uniform over 256 levels: exactly 8 bits per dimension
                  let width = (expected 255.0) - (expected 0.0)
                  close 1e-12 (Math.Log2 width + Pixels.bitsPerDimOffset range) 8.0 (sprintf "%A uniform bits/dim" range)
                  Expect.equal (Pixels.tryParse (Pixels.name range)) (Some range) "name round trip"
          }

          test "dequantisation puts level b in [b, b + 1) / 256, uniformly, reproducibly from the seed" {
              use levels = torch.tensor ([| 0uy; 17uy; 128uy; 255uy |], dtype = torch.uint8)
              use many = levels.repeat ([| 20000L |])
              use g1 = generator 5L
              use y = Pixels.dequantise PixelRange.ZeroOne torch.float64 g1 many
              let v = values y
              let n = float (v.Length / 4)
              for k, b in List.indexed [ 0.0; 17.0; 128.0; 255.0 ] do
                  let mine = v |> Array.indexed |> Array.filter (fun (i, _) -> i % 4 = k) |> Array.map snd
                  for u in mine do
                      if u < b / 256.0 || u >= (b + 1.0) / 256.0 then
                          failtestf "level %g dequantised to %g, outside [b, b + 1) / 256" b u
                  // U(0, 1) / 256 has mean 1/512 and sd 1 / (256 sqrt 12): 5 standard errors
                  close
                      (5.0 / (256.0 * sqrt 12.0 * sqrt n))
                      (Array.average mine)
                      ((b + 0.5) / 256.0)
                      (sprintf "mean of level %g (seed 5)" b)
              use g2 = generator 5L
              use c = Pixels.dequantise PixelRange.Centred torch.float64 g2 many
              use expected = y.mul(sc 2.0).sub(sc 1.0)
              Expect.isTrue ((values c, values expected) ||> Array.forall2 (fun a b -> abs (a - b) < 1e-15)) "centred = 2 y - 1, same draws"
          } ]
