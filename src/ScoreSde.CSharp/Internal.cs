using System.Security.Cryptography;
using Microsoft.FSharp.Core;
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
            ScoreSde.NoiseModule.fromGenerator(generator); // a disposed generator is refused before the draw
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

    /// <summary>One sampling run through the core's single entry point: the start is the latent (copied to
    /// the options' dtype and device when <paramref name="convertLatent"/>, else used as it is) or a draw of
    /// the SDE's prior; the model's tensors are the core's to dispose. Every check is the core's, its
    /// errors naming the options.</summary>
    internal static SampleResult Sample(Sde sde, Func<Tensor, Tensor, Tensor> model, long[] shape, SamplerOptions options,
                                        ScoreSde.Sampling sampling, Tensor? latent, Generator? generator, bool convertLatent = true)
    {
        ArgumentNullException.ThrowIfNull(shape);
        var coreModel = ToModel(model, options.Prediction);
        CheckNoise(options.Noise, "options");
        sampling = new ScoreSde.Sampling(sampling.Method, sampling.Schedule, sampling.Finish, sampling.Observer,
                                         options.Condition is { } condition
                                             ? FSharpOption<ScoreSde.Condition>.Some(condition.ToCore())
                                             : sampling.Condition,
                                         options.CheckFinite);
        return Core(() =>
        {
            // the options first, so that a bad one is reported before anything is drawn
            ScoreSde.SamplingModule.validate(sde.Core, sampling);
            ScoreSde.Noise noise;
            Tensor xT;
            bool owned = true;
            if (latent is not null)
            {
                CheckLatentShape(latent, shape, "options.Latent");
                noise = generator is not null ? ScoreSde.NoiseModule.fromGenerator(generator) : NoiseFor(null, latent.device);
                if (convertLatent) xT = ScoreSde.Sampler.latentAs(latent, options.Dtype, options.Device);
                else (xT, owned) = (latent, false);
            }
            else
            {
                noise = NoiseFrom(options.Noise, options.NoiseSeed, generator, options.Device, "options");
                xT = ScoreSde.Sampler.prior(sde.Core, shape, options.Dtype, options.Device, noise);
            }
            try
            {
                var r = ScoreSde.Sampler.sample(sde.Core, coreModel, sampling, noise, xT);
                return new SampleResult(r.Samples, r.Nfe);
            }
            finally
            {
                if (owned) xT.Dispose();
            }
        }, ("xT", "options.Latent"), ("values", "options.Condition.Values"), ("mask", "options.Condition.Mask"),
           ("basis", "options.Condition.Basis"), ("replacement", "options.Condition.Replacement"));
    }

    /// <summary>An optional C# value as the core's F# option (null is None).</summary>
    internal static Microsoft.FSharp.Core.FSharpOption<double>? Option(double? value) =>
        value is { } v ? Microsoft.FSharp.Core.FSharpOption<double>.Some(v) : null;

    /// <summary>A 63-bit seed from the operating system's entropy source.</summary>
    internal static long EntropySeed() =>
        BitConverter.ToInt64(RandomNumberGenerator.GetBytes(8)) & long.MaxValue;

    /// <summary>Wraps a C# model delegate as a core model (the prediction is an option's).</summary>
    internal static ScoreSde.Model ToModel(Func<Tensor, Tensor, Tensor> model, ModelPrediction prediction)
    {
        ArgumentNullException.ThrowIfNull(model);
        var f = Microsoft.FSharp.Core.FuncConvert.FromFunc(model);
        return prediction switch
        {
            ModelPrediction.Noise => ScoreSde.ModelModule.noise(f),
            ModelPrediction.Score => ScoreSde.ModelModule.score(f),
            ModelPrediction.Data => ScoreSde.ModelModule.data(f),
            _ => throw new ArgumentOutOfRangeException("options.Prediction", prediction, $"options.Prediction must be Noise, Score or Data (got {prediction}).")
        };
    }

    /// <summary>Rejects a starting latent whose shape is not the sample shape, naming the option.</summary>
    internal static void CheckLatentShape(Tensor latent, long[] shape, string name)
    {
        if (!latent.shape.SequenceEqual(shape))
            throw new ArgumentException($"{name} has shape [{string.Join(", ", latent.shape)}] but shape is [{string.Join(", ", shape)}]; they must match.", name);
    }

    // Core settings the facade's option properties stand for: a core error naming one of them names
    // "options.<Property>" instead.
    private static readonly HashSet<string> OptionNames = new(StringComparer.Ordinal)
    {
        "steps", "eps", "snr", "correctorSteps", "rtol", "atol", "maxSteps", "order", "maxEvaluations",
        "probes", "dequantizationOffset", "dtype", "device", "thresholding",
    };

    /// <summary>The facade's name for a parameter the core named: "options.Steps" for "steps", "options.Times"
    /// for an explicit grid, the given renames (e.g. "xT" to "options.Latent"), else the core's name.</summary>
    private static string FacadeName(string? core, (string Core, string Facade)[] renames)
    {
        if (core is null) return "";
        foreach (var (c, f) in renames)
            if (c == core) return f;
        if (OptionNames.Contains(core)) return "options." + char.ToUpperInvariant(core[0]) + core[1..];
        if (core == "thresholding.bound" || core == "thresholding.maxValue") return "options.ThresholdMax";
        if (core == "thresholding.quantile") return "options.ThresholdQuantile";
        if (core == "grid" || core.StartsWith("grid[", StringComparison.Ordinal)) return "options.Times";
        if (core == "lowerOrderFinal.belowSteps") return "options.LowerOrderFinalBelowSteps";
        return core;
    }

    /// <summary>Runs a core call; an ArgumentException it throws is rethrown (same type, actual value and
    /// message) naming the facade's option or parameter instead of the core's, e.g. options.Eps for eps.
    /// The facade validates nothing itself beyond null checks and enum conversions: every check is the core's.</summary>
    internal static T Core<T>(Func<T> body, params (string Core, string Facade)[] renames)
    {
        try
        {
            return body();
        }
        catch (ArgumentException e) when (e.ParamName is { } core && FacadeName(core, renames) != core)
        {
            var name = FacadeName(core, renames);
            var message = e.Message;
            var suffix = $" (Parameter '{core}')";
            int cut = message.IndexOf(suffix, StringComparison.Ordinal);
            if (cut >= 0) message = message[..cut];
            message = name == "options.Times" && core != "grid"
                ? $"options.Times is not a valid grid: {message}"
                : message.StartsWith(core + " ", StringComparison.Ordinal) ? name + message[core.Length..] : $"{name}: {message}";
            throw e switch
            {
                ArgumentOutOfRangeException r => new ArgumentOutOfRangeException(name, r.ActualValue, message),
                ArgumentNullException => new ArgumentNullException(name, message),
                _ => new ArgumentException(message, name, e),
            };
        }
    }
}
