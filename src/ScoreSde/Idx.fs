namespace ScoreSde

open System
open System.IO
open System.IO.Compression

/// An unsigned-byte array read from an IDX file: its dimensions and its bytes in C order.
type IdxArray =
    {
        /// The sizes, outermost first (e.g. [| 60000; 28; 28 |] for MNIST training images).
        Dims: int[]
        /// The elements in C order (last index fastest).
        Data: byte[]
    }

/// IDX files, the format of MNIST and Fashion-MNIST (LeCun et al.): two zero bytes, an element-type
/// byte (0x08 for unsigned bytes), a dimension-count byte, one big-endian 32-bit size per dimension,
/// then the elements in C order. Gzipped files (detected by their first two bytes, whatever their
/// name) are decompressed on reading (single-member gzip, as the datasets ship; a decompressed size
/// that disagrees with the gzip trailer is reported as truncation). Only unsigned-byte files are read, as MNIST-format images and
/// labels are; every malformed file is rejected with an ArgumentException naming the file and what
/// is wrong with it.
[<RequireQualifiedAccess>]
module Idx =
    let private typeNames =
        dict
            [ 0x08uy, "unsigned byte"
              0x09uy, "signed byte"
              0x0Buy, "short"
              0x0Cuy, "int"
              0x0Duy, "float"
              0x0Euy, "double" ]

    /// The file's bytes, gunzipped when it starts with the gzip signature 1f 8b.
    let private contents (path: string) : byte[] =
        FileError.requireFile path
        let raw = File.ReadAllBytes path
        if raw.Length >= 2 && raw.[0] = 0x1Fuy && raw.[1] = 0x8Buy then
            try
                use input = new MemoryStream(raw)
                use gz = new GZipStream(input, CompressionMode.Decompress)
                use output = new MemoryStream()
                gz.CopyTo output
                // the trailer's last 4 bytes hold the uncompressed size mod 2^32; a stream cut short
                // decompresses without complaint, so compare
                let expected = BitConverter.ToUInt32(raw, raw.Length - 4)
                if raw.Length < 18 || uint32 output.Length <> expected then
                    FileError.fail
                        path
                        (sprintf "truncated or corrupt gzip data (%d bytes decompressed, the gzip trailer says %d)" output.Length expected)
                output.ToArray()
            with
            | :? InvalidDataException
            | :? EndOfStreamException as e -> FileError.fail path (sprintf "truncated or corrupt gzip data (%s)" e.Message)
        else
            raw

    /// Parse the bytes of an IDX file (already decompressed); `path` names it in errors.
    let parse (path: string) (bytes: byte[]) : IdxArray =
        Check.notNull "bytes" bytes
        if bytes.Length < 4 then
            FileError.fail path (sprintf "not an IDX file: %d bytes, shorter than the 4-byte magic number" bytes.Length)
        if bytes.[0] <> 0uy || bytes.[1] <> 0uy then
            FileError.fail
                path
                (sprintf
                    "not an IDX file: bad magic number %02x %02x %02x %02x (expected 00 00, a type byte, a dimension count)"
                    bytes.[0]
                    bytes.[1]
                    bytes.[2]
                    bytes.[3])
        match typeNames.TryGetValue bytes.[2] with
        | true, name when bytes.[2] <> 0x08uy ->
            FileError.fail path (sprintf "holds %s elements (type 0x%02x); only unsigned-byte (0x08) IDX files are read" name bytes.[2])
        | false, _ -> FileError.fail path (sprintf "bad magic number: unknown IDX element type 0x%02x" bytes.[2])
        | _ -> ()
        let rank = int bytes.[3]
        if rank = 0 then
            FileError.fail path "bad magic number: the IDX dimension count is 0"
        let headerLength = 4 + 4 * rank
        if bytes.Length < headerLength then
            FileError.fail
                path
                (sprintf "truncated header: %d dimensions need %d header bytes, the file has %d" rank headerLength bytes.Length)
        let dims =
            Array.init rank (fun k ->
                let o = 4 + 4 * k
                (int bytes.[o] <<< 24)
                ||| (int bytes.[o + 1] <<< 16)
                ||| (int bytes.[o + 2] <<< 8)
                ||| int bytes.[o + 3])
        if dims |> Array.exists (fun d -> d < 0) then
            FileError.fail path (sprintf "dimension sizes (%s) must be below 2^31" (String.Join(", ", dims)))
        let count = dims |> Array.fold (fun acc d -> acc * int64 d) 1L
        let available = int64 bytes.Length - int64 headerLength
        if available < count then
            FileError.fail
                path
                (sprintf
                    "truncated data: dimensions (%s) need %d bytes of data, the file holds %d"
                    (String.Join(", ", dims))
                    count
                    available)
        if available > count then
            FileError.fail
                path
                (sprintf
                    "holds %d bytes after the data that dimensions (%s) describe (%d bytes)"
                    (available - count)
                    (String.Join(", ", dims))
                    count)
        if count > int64 Array.MaxLength then
            FileError.fail path (sprintf "holds %d elements, more than one array can" count)
        { Dims = dims; Data = bytes.[headerLength..] }

    /// Read an IDX file of unsigned bytes (gzipped or not).
    let read (path: string) : IdxArray = parse path (contents path)

    /// Read MNIST-format images: a 3-dimensional file [N, H, W].
    let readImages (path: string) : IdxArray =
        let a = read path
        if a.Dims.Length <> 3 then
            FileError.fail
                path
                (sprintf
                    "holds %d dimensions (%s); MNIST-format images have 3 (count, height, width)"
                    a.Dims.Length
                    (String.Join(", ", a.Dims)))
        a

    /// Read MNIST-format labels: a 1-dimensional file [N], one byte per label.
    let readLabels (path: string) : IdxArray =
        let a = read path
        if a.Dims.Length <> 1 then
            FileError.fail
                path
                (sprintf "holds %d dimensions (%s); MNIST-format labels have 1 (count)" a.Dims.Length (String.Join(", ", a.Dims)))
        a

    /// The bytes of an IDX file of unsigned bytes with the given dimensions (uncompressed).
    let encode (dims: int[]) (data: byte[]) : byte[] =
        Check.notNull "dims" dims
        Check.notNull "data" data
        if dims.Length < 1 || dims.Length > 255 then
            Check.fail "dims" dims "1 to 255 dimensions"
        if dims |> Array.exists (fun d -> d < 0) then
            Check.fail "dims" dims "non-negative sizes"
        let count = dims |> Array.fold (fun acc d -> acc * int64 d) 1L
        if count <> int64 data.Length then
            Check.fail "data" data.Length (sprintf "%d bytes for dimensions %A" count dims)
        [| yield! [| 0uy; 0uy; 0x08uy; byte dims.Length |]
           for d in dims do
               yield! [| byte (d >>> 24); byte (d >>> 16); byte (d >>> 8); byte d |]
           yield! data |]

    /// Write an IDX file of unsigned bytes, gzipped when `path` ends in ".gz".
    let write (path: string) (dims: int[]) (data: byte[]) =
        let bytes = encode dims data
        // compressed in memory, then written at once: a failure leaves no half-written file behind
        let contents =
            if path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) then
                use output = new MemoryStream()
                (use gz = new GZipStream(output, CompressionLevel.Fastest, true)
                 gz.Write(bytes, 0, bytes.Length))
                output.ToArray()
            else
                bytes
        File.WriteAllBytes(path, contents)
