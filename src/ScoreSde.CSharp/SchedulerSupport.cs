using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>The noise source of a diffusers-style scheduler, shared by the VP and VE schedulers: the
/// caller's generator (wrapped once while the same one is passed, only referenced, never disposed), or
/// else a private generator seeded from system entropy (never torch's global generator).</summary>
internal sealed class SchedulerNoise
{
    private ScoreSde.Noise? _private;
    private Generator? _lastGenerator;
    private ScoreSde.Noise? _lastNoise;

    /// <summary>The noise for a step on tensors of the given device.</summary>
    internal ScoreSde.Noise For(Generator? generator, Device device)
    {
        if (generator is null)
            return _private ??= Interop.NoiseFor(null, device);
        // A loop passes the same generator every step: wrap it once.
        if (!ReferenceEquals(generator, _lastGenerator))
        {
            _lastNoise = ScoreSde.NoiseModule.fromGenerator(generator);
            _lastGenerator = generator;
        }
        return _lastNoise!;
    }
}

/// <summary>diffusers' <c>scheduler_config.json</c>: the <c>_class_name</c> key and the constructor's
/// arguments under their Python names. Shared by the schedulers' SaveConfig and FromConfig.</summary>
internal static class DiffusersConfigFile
{
    internal const string FileName = "scheduler_config.json";

    /// <summary>Writes the file into a directory (created if needed): first to a temporary file that
    /// then replaces the target, so a failed write leaves no half-written config.</summary>
    /// <returns>The path of the written file.</returns>
    internal static string Write(string directory, string className, JsonObject values)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        Directory.CreateDirectory(directory);
        var json = new JsonObject { ["_class_name"] = className };
        foreach (var (key, value) in values)
            json[key] = value?.DeepClone();
        var path = Path.Combine(directory, FileName);
        var temporary = path + "." + Guid.NewGuid().ToString("N") + ".tmp";
        try
        {
            File.WriteAllText(temporary, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
        return path;
    }

    /// <summary>Reads a config file (or a directory holding one) written for <paramref name="className"/>;
    /// unknown keys are ignored, and missing keys take the fallbacks the reader is asked with.</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="FormatException">Not a JSON object, or another class name.</exception>
    internal static Reader Read(string fileOrDirectory, string className)
    {
        ArgumentException.ThrowIfNullOrEmpty(fileOrDirectory);
        var path = Directory.Exists(fileOrDirectory) ? Path.Combine(fileOrDirectory, FileName) : fileOrDirectory;
        if (!File.Exists(path))
            throw new FileNotFoundException($"No scheduler config at '{path}'.", path);
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path));
        }
        catch (JsonException e)
        {
            throw new FormatException($"'{path}' is not valid JSON: {e.Message}", e);
        }
        if (root is not JsonObject obj)
            throw new FormatException($"'{path}' must hold a JSON object.");
        if (obj.TryGetPropertyValue("_class_name", out var cls) && cls is not null)
        {
            var name = cls.GetValueKind() == JsonValueKind.String ? cls.GetValue<string>() : cls.ToJsonString();
            if (name != className)
                throw new FormatException($"'{path}': _class_name must be \"{className}\" (got {cls.ToJsonString()}).");
        }
        return new Reader(obj, path);
    }

    /// <summary>Typed access to the keys of a config file.</summary>
    internal sealed class Reader(JsonObject obj, string path)
    {
        /// <summary>The number under <paramref name="key"/>, or <paramref name="fallback"/> when absent or null.</summary>
        /// <exception cref="FormatException">The value is not a number.</exception>
        internal double Number(string key, double fallback)
        {
            if (!obj.TryGetPropertyValue(key, out var node) || node is null) return fallback;
            if (node.GetValueKind() != JsonValueKind.Number)
                throw new FormatException($"'{path}': {key} must be a number (got {node.ToJsonString()}).");
            return node.GetValue<double>();
        }

        /// <summary>The integer under <paramref name="key"/>, or <paramref name="fallback"/> when absent or null.</summary>
        /// <exception cref="FormatException">The value is not a whole number in the range of int.</exception>
        internal int Integer(string key, int fallback)
        {
            double value = Number(key, fallback);
            if (value != Math.Floor(value) || value < int.MinValue || value > int.MaxValue)
                throw new FormatException($"'{path}': {key} must be an integer (got {value.ToString(CultureInfo.InvariantCulture)}).");
            return (int)value;
        }
    }
}
