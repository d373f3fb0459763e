/// The command line's output files: checked before any work, written atomically (a temporary name in
/// the same folder, then a rename), so a failed run leaves nothing half-written behind.
module ScoreSde.Cli.Outputs

open System
open System.IO

/// The nearest existing folder on the way up from `path`'s folder (None when nothing exists).
let rec private existingAncestor (dir: string) =
    if String.IsNullOrEmpty dir then None
    elif Directory.Exists dir then Some dir
    elif File.Exists dir then None
    else existingAncestor (Path.GetDirectoryName dir)

let private cannot (option: string) (path: string) (why: string) =
    raise (ArgumentException(sprintf "%s: cannot write '%s' (%s)." option path why, option))

/// Check that a file (or, with `isDirectory`, a folder) can be written at `path` before the work
/// starts: it is not of the other kind, the folders on the way exist or can be made, and a file can be
/// created in the nearest existing one (probed with a temporary file that is removed). Nothing stays.
let checkWritable (option: string) (isDirectory: bool) (path: string) =
    let full = Path.GetFullPath path
    if not isDirectory && Directory.Exists full then
        cannot option path "it is a folder"
    if isDirectory && File.Exists full then
        cannot option path "it is an existing file, not a folder"
    let start = if isDirectory && Directory.Exists full then full else Path.GetDirectoryName full
    match existingAncestor start with
    | None -> cannot option path "a part of its folder path is a file, or the path has no existing folder"
    | Some dir ->
        let probe = Path.Combine(dir, sprintf ".scoresde-probe-%s" (Guid.NewGuid().ToString "N"))
        try
            use _ = new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)
            ()
        with
        | :? UnauthorizedAccessException
        | :? IOException as e -> cannot option path (sprintf "'%s' is not writable: %s" dir e.Message)

/// A temporary sibling of `path` that keeps its extension (the writers choose the format by it).
let private temporaryFor (path: string) =
    let full = Path.GetFullPath path
    let dir = Path.GetDirectoryName full
    Path.Combine(dir, sprintf ".%s.%s.tmp%s" (Path.GetFileName full) (Guid.NewGuid().ToString "N") (Path.GetExtension full))

/// Write a file atomically: `write` writes a temporary file in the same folder, which then replaces
/// `path`; on any failure the temporary file is removed and `path` is left as it was.
let writeFile (path: string) (write: string -> unit) =
    let full = Path.GetFullPath path
    Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
    let temporary = temporaryFor full
    try
        write temporary
        File.Move(temporary, full, true)
    finally
        if File.Exists temporary then
            File.Delete temporary

/// A folder written in two phases: `write` fills a temporary sibling folder; `commit` then moves its
/// files into the target (created if needed; files of the same names replaced, each by a rename).
/// Dispose without committing removes the temporary folder.
type StagedFolder(path: string) =
    let full = Path.GetFullPath path
    let temporary =
        Path.Combine(Path.GetDirectoryName full, sprintf ".%s.%s.tmp" (Path.GetFileName full) (Guid.NewGuid().ToString "N"))
    do Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
    /// The temporary folder to write into.
    member _.Temporary = temporary

    /// Move the written files into the target folder.
    member _.Commit() =
        if not (Directory.Exists full) then
            Directory.Move(temporary, full)
        else
            for f in Directory.GetFiles temporary do
                File.Move(f, Path.Combine(full, Path.GetFileName f), true)
            Directory.Delete(temporary, true)

    interface IDisposable with
        member _.Dispose() =
            if Directory.Exists temporary then
                Directory.Delete(temporary, true)
