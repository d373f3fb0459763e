using Microsoft.FSharp.Core;
using static TorchSharp.torch;

namespace ScoreSde.CSharp;

/// <summary>
/// Guidance as model transformations: each method returns a model delegate to pass to any <see cref="Sampler"/>
/// method (with the same <see cref="ModelOptions.Prediction"/> as the model it guides). Guided models work with
/// every sampler; docs/conditional.md compares the DPM solvers under guidance (the default
/// <see cref="DpmSolverOptions"/> measured best from 15 evaluations on the benchmark's mixtures; DPM-Solver++ with
/// <see cref="DpmSolverOptions.Thresholding"/> is the DPM-Solver++ paper's choice for guided image models).
/// </summary>
public static class Guidance
{
    /// <summary>A class-conditional model with its labels fixed: a plain model delegate.</summary>
    /// <param name="conditionalModel">The model, called as model(x, t, labels) with labels an int64 tensor of one
    /// label per sample; returns a tensor shaped like x. It must not modify its inputs.</param>
    /// <param name="labels">An int64 tensor of one label per sample, or one label for the batch. Not copied: it
    /// must stay alive and unchanged while the returned delegate is used.</param>
    /// <returns>The model delegate.</returns>
    /// <exception cref="ArgumentException">The labels are not an int64 tensor of one or B labels (parameter "labels").</exception>
    public static Func<Tensor, Tensor, Tensor> Conditional(Func<Tensor, Tensor, Tensor, Tensor> conditionalModel, Tensor labels)
    {
        ArgumentNullException.ThrowIfNull(conditionalModel);
        ArgumentNullException.ThrowIfNull(labels);
        var core = ScoreSde.Guidance.conditional(ToCore(conditionalModel, 0), labels);
        return ToDelegate(core);
    }

    /// <summary>
    /// Classifier-free guidance (Ho and Salimans 2022): (1 + scale) model(x, t, labels) - scale model(x, t, null)
    /// with null the <paramref name="nullLabel"/>. The combination is affine, so it means the same for noise,
    /// score and data predictions. Scale 0 is the conditional model itself (one evaluation per call).
    /// </summary>
    /// <param name="conditionalModel">The class-conditional model, called as model(x, t, labels).</param>
    /// <param name="nullLabel">The label meaning "no class" (the unconditional model).</param>
    /// <param name="labels">An int64 tensor of one label per sample, or one for the batch (not copied).</param>
    /// <param name="scale">The guidance weight w, zero or more.</param>
    /// <param name="batched">Evaluate both predictions in one call on a batch of 2B (default) instead of two calls
    /// on B; docs/conditional.md measures both.</param>
    /// <returns>The guided model delegate.</returns>
    /// <exception cref="ArgumentException">The labels or the scale are invalid; the message names them.</exception>
    public static Func<Tensor, Tensor, Tensor> ClassifierFree(Func<Tensor, Tensor, Tensor, Tensor> conditionalModel, long nullLabel,
                                                              Tensor labels, double scale, bool batched = true)
    {
        ArgumentNullException.ThrowIfNull(conditionalModel);
        ArgumentNullException.ThrowIfNull(labels);
        var evaluation = batched ? ScoreSde.GuidanceEvaluation.Batched : ScoreSde.GuidanceEvaluation.Separate;
        var core = Interop.Core(() => ScoreSde.Guidance.classifierFreeWith(evaluation, ToCore(conditionalModel, nullLabel), labels, scale),
                                ("w", "scale"));
        return ToDelegate(core);
    }

    /// <summary>
    /// Classifier guidance (Song et al. 2021, Sec. 5): the model's score plus <paramref name="scale"/> times
    /// grad_x log p(labels | x, t) of a time-dependent classifier, converted to the model's output kind. The
    /// gradient comes from autograd, with gradients enabled around the classifier's call only.
    /// </summary>
    /// <param name="sde">The SDE the model and classifier were trained with.</param>
    /// <param name="model">The model, called as model(x, t).</param>
    /// <param name="prediction">What the model returns (the guided delegate returns the same kind).</param>
    /// <param name="classifier">The classifier, called as classifier(x, t) with x requiring gradients; returns
    /// [batch, classes] logits or log-probabilities, differentiable in x.</param>
    /// <param name="labels">An int64 tensor of one label per sample, or one for the batch (not copied).</param>
    /// <param name="scale">The guidance scale (1: the exact class-conditional score for an exact classifier).</param>
    /// <returns>The guided model delegate.</returns>
    /// <exception cref="ArgumentException">The labels or the scale are invalid; the message names them.</exception>
    public static Func<Tensor, Tensor, Tensor> Classifier(Sde sde, Func<Tensor, Tensor, Tensor> model, ModelPrediction prediction,
                                                          Func<Tensor, Tensor, Tensor> classifier, Tensor labels, double scale)
    {
        ArgumentNullException.ThrowIfNull(sde);
        ArgumentNullException.ThrowIfNull(classifier);
        ArgumentNullException.ThrowIfNull(labels);
        var coreModel = Interop.ToModel(model, prediction);
        var f = FuncConvert.FromFunc(classifier);
        var core = Interop.Core(() => ScoreSde.Guidance.classifier(sde.Core, coreModel, f, labels, scale));
        return ToDelegate(core);
    }

    private static ScoreSde.ConditionalModel ToCore(Func<Tensor, Tensor, Tensor, Tensor> model, long nullLabel) =>
        new(FuncConvert.FromFunc(model), ScoreSde.ModelOutput.Noise, nullLabel);

    private static Func<Tensor, Tensor, Tensor> ToDelegate(ScoreSde.Model model)
    {
        var forward = model.Forward;
        return (x, t) => FSharpFunc<Tensor, Tensor>.InvokeFast(forward, x, t);
    }
}
