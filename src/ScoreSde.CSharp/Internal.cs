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
