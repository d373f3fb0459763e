namespace ScoreSde.Cli

open System
open System.CommandLine
open System.CommandLine.Parsing

/// Helpers that build System.CommandLine options with validation: every invalid value becomes one
/// parse error naming the option and the value.
[<RequireQualifiedAccess>]
module Opt =
    let private withDefault (option: Option<'T>) (value: 'T option) =
        value |> Option.iter (fun v -> option.DefaultValueFactory <- Func<ArgumentResult, 'T>(fun _ -> v))
        option

    let private validate (option: Option<'T>) (check: 'T -> string option) =
        option.Validators.Add(fun (r: OptionResult) ->
            match r.Tokens |> Seq.tryHead with
            | None -> ()
            | Some _ ->
                // a token that does not convert is reported by the parser itself
                let value =
                    try
                        Some(r.GetValueOrDefault<'T>())
                    with _ ->
                        None
                match value |> Option.bind check with
                | Some problem -> r.AddError(sprintf "%s %s" option.Name problem)
                | None -> ())
        option

    /// A string option.
    let text (name: string) (description: string) (value: string option) =
        Option<string>(name, Description = description) |> withDefault <| value

    /// A required string option.
    let required (name: string) (description: string) = Option<string>(name, Description = description, Required = true)

    /// An integer option that must be at least `least`.
    let intAtLeast (least: int) (name: string) (description: string) (value: int option) =
        let o = Option<int>(name, Description = description) |> withDefault <| value
        validate o (fun v -> if v < least then Some(sprintf "must be at least %d (got %d)" least v) else None)

    /// An optional integer that must be at least `least` when given (absent: null).
    let intAtLeastOrNone (least: int) (name: string) (description: string) =
        let o = Option<Nullable<int>>(name, Description = description)
        validate o (fun v ->
            if v.HasValue && v.Value < least then
                Some(sprintf "must be at least %d (got %d)" least v.Value)
            else
                None)

    /// A positive finite number.
    let positive (name: string) (description: string) (value: float option) =
        let o = Option<float>(name, Description = description) |> withDefault <| value
        validate o (fun v ->
            if not (v > 0.0) || Double.IsInfinity v then
                Some(sprintf "must be a positive number (got %g)" v)
            else
                None)

    /// An optional positive finite number (absent: null).
    let positiveOrNone (name: string) (description: string) =
        let o = Option<Nullable<float>>(name, Description = description)
        validate o (fun v ->
            if v.HasValue && (not (v.Value > 0.0) || Double.IsInfinity v.Value) then
                Some(sprintf "must be a positive number (got %g)" v.Value)
            else
                None)

    /// An optional finite number, zero or more (absent: null).
    let nonNegativeOrNone (name: string) (description: string) =
        let o = Option<Nullable<float>>(name, Description = description)
        validate o (fun v ->
            if v.HasValue && (not (v.Value >= 0.0) || Double.IsInfinity v.Value) then
                Some(sprintf "must be a number, zero or more (got %g)" v.Value)
            else
                None)

    /// A number in [low, high).
    let inRange (low: float) (high: float) (name: string) (description: string) (value: float option) =
        let o = Option<float>(name, Description = description) |> withDefault <| value
        validate o (fun v -> if not (v >= low && v < high) then Some(sprintf "must be in [%g, %g) (got %g)" low high v) else None)

    /// A 64-bit seed.
    let seed (description: string) =
        Option<int64>("--seed", Description = description, DefaultValueFactory = Func<ArgumentResult, int64>(fun _ -> 0L))

    /// One of a fixed set of (case-insensitive) words.
    let choice (name: string) (description: string) (choices: string list) (value: string option) =
        let o = Option<string>(name, Description = description) |> withDefault <| value
        o.HelpName <- String.Join("|", choices)
        validate o (fun v ->
            if
                isNull v
                || not (choices |> List.exists (fun c -> String.Equals(c, v, StringComparison.OrdinalIgnoreCase)))
            then
                Some(sprintf "must be one of %s (got '%s')" (String.Join(", ", choices)) v)
            else
                None)

    /// Require a string option's value to end in one of the extensions (case-insensitive): anything
    /// else is a usage error naming the option.
    let withExtensions (extensions: string list) (option: Option<string>) =
        validate option (fun v ->
            if isNull v then
                None
            else
                let ext = IO.Path.GetExtension(v).ToLowerInvariant()
                if List.contains ext extensions then
                    None
                else
                    Some(sprintf "must end in %s (got '%s')" (String.Join(", ", extensions)) v))

    /// A flag.
    let flag (name: string) (description: string) = Option<bool>(name, Description = description)

    /// The value of a choice option, lower-cased.
    let choiceValue (pr: ParseResult) (o: Option<string>) = pr.GetValue(o).ToLowerInvariant()
