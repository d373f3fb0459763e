using System.Runtime.CompilerServices;

namespace ScoreSde.CSharp;

/// <summary>Loads TorchSharp's bundled libtorch before anything in this assembly runs.</summary>
internal static class Initialization
{
    /// <summary>Preloads the bundled native libraries (see <c>ScoreSde.Native</c>).</summary>
    // A library module initializer is deliberate here: it must run before TorchSharp's first call.
#pragma warning disable CA2255
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Run() => ScoreSde.Native.ensureLoaded();
}
