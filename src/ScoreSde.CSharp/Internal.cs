using System.Security.Cryptography;
using TorchSharp;
using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>Conversions between the facade's types and the F# core's.</summary>
internal static class Interop
{
    /// <summary>The core's noise source for an optional caller generator. Without one, a private
    /// generator seeded from the operating system's entropy is used (never torch's global one).</summary>
    internal static ScoreSde.Noise NoiseFor(Generator? generator, Device? device = null) =>
        generator is not null
            ? ScoreSde.NoiseModule.fromGenerator(generator)
            : ScoreSde.NoiseModule.fromSeed(EntropySeed(), device ?? CPU);

    /// <summary>The noise of a sampler from its options: the generator's stream, or a per-sample or
    /// fast source whose seed is the given one, else drawn from the generator (else from entropy).</summary>
    internal static ScoreSde.Noise NoiseFrom(NoiseSource source, long? seed, Generator? generator, Device device, string prefix)
    {
        CheckNoise(source, prefix);
        if (source == NoiseSource.Generator) return NoiseFor(generator, device);
        long s;
        if (seed is { } given) s = given;
        else if (generator is not null)
        {
            using var draw = randint(long.MaxValue, new long[] { 1 }, dtype: ScalarType.Int64, device: generator.device, generator: generator);
            s = draw.item<long>();
        }
        else s = EntropySeed();
        return source == NoiseSource.PerSample ? ScoreSde.NoiseModule.perSample(s) : ScoreSde.NoiseModule.fast(s);
    }

    /// <summary>The core's Langevin norm; a value outside the enum is rejected naming the option.</summary>
    internal static ScoreSde.LangevinNorm ToCore(LangevinNorm norm, string name) => norm switch
    {
        LangevinNorm.BatchMean => ScoreSde.LangevinNorm.BatchMean,
        LangevinNorm.PerSample => ScoreSde.LangevinNorm.PerSample,
        _ => throw new ArgumentOutOfRangeException(name, norm, $"{name} must be BatchMean or PerSample (got {norm})."),
    };

    /// <summary>Rejects a noise source outside the enum, naming the option.</summary>
    internal static void CheckNoise(NoiseSource source, string prefix)
    {
        if (source != NoiseSource.Generator && source != NoiseSource.PerSample && source != NoiseSource.Fast)
            throw new ArgumentOutOfRangeException($"{prefix}.Noise", source, $"{prefix}.Noise must be Generator, PerSample or Fast (got {source}).");
    }

    /// <summary>An optional C# value as the core's F# option (null is None).</summary>
    internal static Microsoft.FSharp.Core.FSharpOption<double>? Option(double? value) =>
        value is { } v ? Microsoft.FSharp.Core.FSharpOption<double>.Some(v) : null;

    /// <summary>A 63-bit seed from the operating system's entropy source.</summary>
    internal static long EntropySeed() =>
        BitConverter.ToInt64(RandomNumberGenerator.GetBytes(8)) & long.MaxValue;

    /// <summary>Wraps a C# model delegate as a core model.</summary>
    internal static ScoreSde.Model ToModel(Func<Tensor, Tensor, Tensor> model, ModelPrediction prediction)
    {
        ArgumentNullException.ThrowIfNull(model);
        var f = Microsoft.FSharp.Core.FuncConvert.FromFunc(model);
        return prediction switch
        {
            ModelPrediction.Noise => ScoreSde.ModelModule.noise(f),
            ModelPrediction.Score => ScoreSde.ModelModule.score(f),
            ModelPrediction.Data => ScoreSde.ModelModule.data(f),
            _ => throw new ArgumentOutOfRangeException(nameof(prediction), prediction, $"prediction must be Noise, Score or Data (got {prediction}).")
        };
    }

    /// <summary>Validates a floating dtype choice.</summary>
    internal static void CheckDtype(ScalarType dtype, string name)
    {
        if (dtype != ScalarType.Float32 && dtype != ScalarType.Float64 && dtype != ScalarType.Float16 && dtype != ScalarType.BFloat16)
            throw new ArgumentException($"{name} must be a floating-point dtype (got {dtype}).", name);
    }

    /// <summary>Validates a sample shape (batch first, all sizes positive).</summary>
    internal static void CheckShape(long[] shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        if (shape.Length == 0 || shape.Any(d => d < 1))
            throw new ArgumentException($"shape must be a non-empty list of positive sizes, batch first (got [{string.Join(", ", shape)}]).", nameof(shape));
    }

    /// <summary>Rejects a starting latent whose shape is not the sample shape, naming the option.</summary>
    internal static void CheckLatentShape(Tensor latent, long[] shape, string name)
    {
        if (!latent.shape.SequenceEqual(shape))
            throw new ArgumentException($"{name} has shape [{string.Join(", ", latent.shape)}] but shape is [{string.Join(", ", shape)}]; they must match.", name);
    }

    /// <summary>Validates a data batch: a floating-point tensor with a non-empty batch dimension.</summary>
    internal static void CheckData(Tensor data, string name)
    {
        ArgumentNullException.ThrowIfNull(data, name);
        if (!is_floating_point(data))
            throw new ArgumentException($"{name} must be a floating-point tensor (got {data.dtype}).", name);
        if (data.dim() < 1 || data.shape[0] < 1)
            throw new ArgumentException($"{name} must have a batch dimension of at least one sample (got shape [{string.Join(", ", data.shape)}]).", name);
    }
}
