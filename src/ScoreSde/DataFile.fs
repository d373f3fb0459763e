namespace ScoreSde

open System
open System.Globalization
open System.IO
open System.Text
open System.Text.RegularExpressions
open TorchSharp

/// A numeric array read from or written to a file: row-major (C order) values and a shape.
type HostArray =
    {
        Shape: int64[]
        /// The values in C order (last index fastest), as doubles.
        Values: float[]
        /// The element type in the file: torch.float32 or torch.float64 (torch.uint8 for .npy images).
        Dtype: torch.ScalarType
    }

/// Errors in a file's contents: an ArgumentException naming the `path` parameter, the file and what
/// is wrong with it.
module internal FileError =
    let fail (path: string) (problem: string) : 'a = raise (ArgumentException(sprintf "%s: %s" path problem, "path"))

    let requireFile (path: string) =
        if String.IsNullOrWhiteSpace path then
            raise (ArgumentException("path must name a file (got an empty string).", "path"))
        if Directory.Exists path then
            fail path "is a directory, not a file"
        if not (File.Exists path) then
            fail path "no such file"

/// NumPy `.npy` files (format versions 1.0, 2.0 and 3.0): little-endian float32 ('<f4') or float64
/// ('<f8') arrays of any rank, C or Fortran order on reading; C order on writing. uint8 ('|u1') arrays,
/// as images are stored, are read too.
[<RequireQualifiedAccess>]
module Npy =
    let private magic = [| 0x93uy; byte 'N'; byte 'U'; byte 'M'; byte 'P'; byte 'Y' |]

    let private descrPattern = Regex(@"['""]descr['""]\s*:\s*['""]([^'""]*)['""]")
    let private orderPattern = Regex(@"['""]fortran_order['""]\s*:\s*(True|False)")
    let private shapePattern = Regex(@"['""]shape['""]\s*:\s*\(([^)]*)\)")

    /// Parse the header dictionary: dtype description, Fortran order flag and shape.
    let private parseHeader (path: string) (header: string) =
        let descr = descrPattern.Match header
        let order = orderPattern.Match header
        let shape = shapePattern.Match header
        if
            not (header.TrimStart().StartsWith "{")
            || not descr.Success
            || not order.Success
            || not shape.Success
        then
            FileError.fail path (sprintf "malformed .npy header %s (expected 'descr', 'fortran_order' and 'shape' keys)" (header.Trim()))
        let dims =
            shape.Groups.[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
            |> Array.map (fun s ->
                match Int64.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture) with
                | true, v -> v
                | _ -> FileError.fail path (sprintf "malformed .npy shape (%s)" shape.Groups.[1].Value))
        let dtype, size =
            match descr.Groups.[1].Value with
            | "<f4" -> torch.float32, 4
            | "<f8" -> torch.float64, 8
            | "|u1"
            | "<u1" -> torch.uint8, 1
            | d -> FileError.fail path (sprintf "unsupported .npy dtype '%s' (supported: '<f4' float32, '<f8' float64, '|u1' uint8)" d)
        dtype, size, order.Groups.[1].Value = "True", dims

    /// Read a .npy file.
    let read (path: string) : HostArray =
        FileError.requireFile path
        let bytes = File.ReadAllBytes path
        if bytes.Length < 10 || bytes.[0..5] <> magic then
            FileError.fail path "not a .npy file (missing the \\x93NUMPY magic string)"
        let major = bytes.[6]
        let headerLength, headerStart =
            match major with
            | 1uy -> int (BitConverter.ToUInt16(bytes, 8)), 10
            | 2uy
            | 3uy when bytes.Length >= 12 -> int (BitConverter.ToUInt32(bytes, 8)), 12
            | _ -> FileError.fail path (sprintf "unsupported .npy format version %d.%d" major bytes.[7])
        if headerLength < 0 || headerStart + headerLength > bytes.Length then
            FileError.fail path "truncated .npy header"
        let encoding = if major = 3uy then Encoding.UTF8 else Encoding.Latin1
        let header = encoding.GetString(bytes, headerStart, headerLength)
        let dtype, size, fortran, shape = parseHeader path header
        let count = shape |> Array.fold (fun acc d -> acc * d) 1L
        let dataStart = headerStart + headerLength
        let expected = int64 dataStart + count * int64 size
        if int64 bytes.Length <> expected then
            FileError.fail
                path
                (sprintf
                    "holds %d bytes of data but its header declares shape (%s) of %s, which needs %d"
                    (bytes.Length - dataStart)
                    (String.Join(", ", shape))
                    (match size with
                     | 1 -> "uint8"
                     | 4 -> "float32"
                     | _ -> "float64")
                    (count * int64 size))
        let raw =
            if size = 1 then
                Array.init (int count) (fun i -> float bytes.[dataStart + i])
            elif size = 4 then
                Array.init (int count) (fun i -> float (BitConverter.ToSingle(bytes, dataStart + 4 * i)))
            else
                Array.init (int count) (fun i -> BitConverter.ToDouble(bytes, dataStart + 8 * i))
        let values =
            if not fortran || shape.Length < 2 then
                raw
            else
                // Fortran order: the first index is fastest. Reorder to C order.
                let dims = shape |> Array.map int
                let rank = dims.Length
                let cStrides = Array.zeroCreate rank
                let fStrides = Array.zeroCreate rank
                cStrides.[rank - 1] <- 1
                for k in rank - 2 .. -1 .. 0 do
                    cStrides.[k] <- cStrides.[k + 1] * dims.[k + 1]
                fStrides.[0] <- 1
                for k in 1 .. rank - 1 do
                    fStrides.[k] <- fStrides.[k - 1] * dims.[k - 1]
                Array.init (int count) (fun c ->
                    let mutable rest = c
                    let mutable f = 0
                    for k in 0 .. rank - 1 do
                        let idx = rest / cStrides.[k]
                        rest <- rest % cStrides.[k]
                        f <- f + idx * fStrides.[k]
                    raw.[f])
        { Shape = shape; Values = values; Dtype = dtype }

    /// Write a C-order .npy file (format 1.0, or 2.0 when the header needs more than 65535 bytes).
    let write (path: string) (array: HostArray) =
        Check.notNull "array" array
        Check.shape "array.Shape" array.Shape
        let count = array.Shape |> Array.fold (fun acc d -> acc * d) 1L
        if int64 array.Values.Length <> count then
            Check.fail "array.Values" array.Values.Length (sprintf "%d values for shape %s" count (Check.shapeText array.Shape))
        let descr, size =
            if array.Dtype = torch.float32 then "<f4", 4
            elif array.Dtype = torch.float64 then "<f8", 8
            else Check.fail "array.Dtype" array.Dtype "float32 or float64"
        let shapeText =
            match array.Shape with
            | [| d |] -> sprintf "(%d,)" d
            | dims -> "(" + String.Join(", ", dims) + ")"
        let dict = sprintf "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" descr shapeText
        // pad with spaces and a final newline so that the data start is a multiple of 64 bytes
        let pad prefix = (64 - (prefix + dict.Length + 1) % 64) % 64
        let v1 = 10 + dict.Length + 1 + pad 10 <= 10 + 65535
        let prefix = if v1 then 10 else 12
        let header = dict + String(' ', pad prefix) + "\n"
        use stream = File.Create path
        use w = new BinaryWriter(stream)
        w.Write(magic)
        w.Write(if v1 then 1uy else 2uy)
        w.Write(0uy)
        if v1 then w.Write(uint16 header.Length) else w.Write(uint32 header.Length)
        w.Write(Encoding.Latin1.GetBytes header)
        if size = 4 then
            for v in array.Values do
                w.Write(float32 v)
        else
            for v in array.Values do
                w.Write(v)

/// Comma-separated text files of numbers: one point per line, the same number of columns on every
/// line; an optional first line of column names; blank lines and lines starting with '#' skipped.
[<RequireQualifiedAccess>]
module Csv =
    let private tryNumber (s: string) =
        match Double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture) with
        | true, v -> Some v
        | _ -> None

    /// Read a CSV file as a [rows, columns] float64 array.
    let read (path: string) : HostArray =
        FileError.requireFile path
        let rows = ResizeArray<float[]>()
        let mutable columns = -1
        let mutable lineNo = 0
        for line in File.ReadLines path do
            lineNo <- lineNo + 1
            let text = line.Trim()
            if text.Length > 0 && not (text.StartsWith "#") then
                let fields = text.Split(',')
                let parsed = fields |> Array.map tryNumber
                if rows.Count = 0 && columns < 0 && parsed |> Array.forall Option.isNone then
                    columns <- fields.Length // a header line of column names
                else
                    match parsed |> Array.tryFindIndex Option.isNone with
                    | Some k -> FileError.fail path (sprintf "line %d, column %d: '%s' is not a number" lineNo (k + 1) (fields.[k].Trim()))
                    | None ->
                        if columns >= 0 && fields.Length <> columns then
                            FileError.fail path (sprintf "line %d has %d columns but earlier lines have %d" lineNo fields.Length columns)
                        columns <- fields.Length
                        rows.Add(parsed |> Array.map Option.get)
        if rows.Count = 0 then
            FileError.fail path "holds no rows of numbers"
        { Shape = [| int64 rows.Count; int64 columns |]; Values = Array.concat rows; Dtype = torch.float64 }

    /// Write a [rows, columns] array (or a 1-D array as one column) with round-trip precision,
    /// optionally under a header line of column names.
    let write (path: string) (header: string[] option) (array: HostArray) =
        Check.notNull "array" array
        let rows, cols =
            match array.Shape with
            | [| r |] -> r, 1L
            | [| r; c |] -> r, c
            | s -> Check.fail "array.Shape" s "a 1-D or 2-D shape (CSV files hold a table)"
        if int64 array.Values.Length <> rows * cols then
            Check.fail "array.Values" array.Values.Length (sprintf "%d values for shape %s" (rows * cols) (Check.shapeText array.Shape))
        let format (v: float) =
            if array.Dtype = torch.float32 then
                (float32 v).ToString("R", CultureInfo.InvariantCulture)
            else
                v.ToString("R", CultureInfo.InvariantCulture)
        use w = new StreamWriter(path, false, UTF8Encoding(false))
        header |> Option.iter (fun h -> w.WriteLine(String.Join(",", h)))
        let sb = StringBuilder()
        for r in 0L .. rows - 1L do
            sb.Clear() |> ignore
            for c in 0L .. cols - 1L do
                if c > 0L then
                    sb.Append(',') |> ignore
                sb.Append(format array.Values.[int (r * cols + c)]) |> ignore
            w.WriteLine(sb.ToString())

/// Data files by extension: `.csv` and `.npy`, as [N, D] tensors.
[<RequireQualifiedAccess>]
module DataFile =
    /// The supported extensions.
    let extensions = [ ".csv"; ".npy" ]

    let private extensionOf (path: string) =
        let ext = Path.GetExtension(path: string).ToLowerInvariant()
        if not (List.contains ext extensions) then
            FileError.fail path (sprintf "unsupported file type '%s' (use %s)" ext (String.Join(" or ", extensions)))
        ext

    /// Read a .csv or .npy file as a host array.
    let readArray (path: string) : HostArray =
        FileError.requireFile path
        match extensionOf path with
        | ".npy" -> Npy.read path
        | _ -> Csv.read path

    /// A host array as a tensor of the given dtype (CPU).
    let toTensor (array: HostArray) (dtype: torch.ScalarType) : Tensor =
        Native.ensureLoaded ()
        use t = torch.tensor (array.Values, dtype = torch.float64)
        use r = t.reshape (array.Shape)
        r.to_type (dtype)

    /// A tensor's values as a host array (its dtype kept when float32 or float64).
    let ofTensor (x: Tensor) : HostArray =
        Check.floating "x" x
        let dtype = if x.dtype = torch.float32 then torch.float32 else torch.float64
        // the chain's intermediates belong to the scope (an unowned one could be finalised mid-call)
        use scope = torch.NewDisposeScope()
        let d = x.detach().cpu().to_type(torch.float64).contiguous()
        { Shape = x.shape; Values = d.data<float>().ToArray(); Dtype = dtype }

    /// Read a data file of N points in D dimensions as an [N, D] tensor of `dtype`. A 1-D array is
    /// read as N points in 1 dimension; higher ranks and non-finite values are rejected.
    let load (path: string) (dtype: torch.ScalarType) : Tensor =
        let a = readArray path
        let a =
            match a.Shape with
            | [| n |] -> { a with Shape = [| n; 1L |] }
            | [| _; _ |] -> a
            | s ->
                FileError.fail
                    path
                    (sprintf "holds an array of shape (%s); expected a 2-D array of N points by D coordinates" (String.Join(", ", s)))
        if a.Shape.[0] < 1L || a.Shape.[1] < 1L then
            FileError.fail path (sprintf "holds an empty array of shape (%d, %d)" a.Shape.[0] a.Shape.[1])
        match a.Values |> Array.tryFindIndex (fun v -> Double.IsNaN v || Double.IsInfinity v) with
        | Some i ->
            FileError.fail
                path
                (sprintf
                    "row %d, column %d is %g; data must be finite"
                    (int64 i / a.Shape.[1] + 1L)
                    (int64 i % a.Shape.[1] + 1L)
                    a.Values.[i])
        | None -> ()
        toTensor a dtype

    /// Write a tensor to a .csv or .npy file (chosen by extension). CSV files hold [N, D] tables:
    /// higher-rank tensors are flattened per sample.
    let save (path: string) (x: Tensor) =
        let ext = extensionOf path
        let a = ofTensor x
        match ext with
        | ".npy" -> Npy.write path a
        | _ ->
            let a =
                if a.Shape.Length <= 2 then
                    a
                else
                    { a with Shape = [| a.Shape.[0]; (a.Shape |> Array.skip 1 |> Array.fold (*) 1L) |] }
            Csv.write path None a
