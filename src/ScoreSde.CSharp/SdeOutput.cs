using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>The result of a scheduler step: the new sample and its mean (the sample without the
/// step's noise). Deconstructs to <c>(prevSample, prevSampleMean)</c>.</summary>
public sealed class SdeOutput
{
    internal SdeOutput(Tensor prevSample, Tensor prevSampleMean)
    {
        PrevSample = prevSample;
        PrevSampleMean = prevSampleMean;
    }

    /// <summary>The sample after the step (mean plus noise). Owned by the caller.</summary>
    public Tensor PrevSample { get; }

    /// <summary>The mean of the step, without noise (use it after the last step). Owned by the caller.</summary>
    public Tensor PrevSampleMean { get; }

    /// <summary>Deconstructs to <c>(prevSample, prevSampleMean)</c>.</summary>
    public void Deconstruct(out Tensor prevSample, out Tensor prevSampleMean)
    {
        prevSample = PrevSample;
        prevSampleMean = PrevSampleMean;
    }
}
