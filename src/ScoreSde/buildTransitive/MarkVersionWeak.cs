// The build-time half of ScoreSde's native loading fix (the run-time half is ScoreSde.Native in
// src/ScoreSde/Native.fs). Compiled by MSBuild's RoslynCodeTaskFactory from ScoreSde.targets, both in
// this repository (Directory.Build.targets imports it) and in every project that references the
// ScoreSde package (the package ships this folder as buildTransitive/).
//
// TorchSharp 0.107.0's libLibTorchSharp.so was linked by GCC 13, so its ELF version-needs table
// (.gnu.version_r) asks libstdc++ for GLIBCXX_3.4.32. Only one symbol uses that version:
// _ZSt21ios_base_library_initv, a link-time marker the library never calls. Distributions whose
// libstdc++ predates GCC 13 (Debian 12, Ubuntu 22.04: GLIBCXX up to 3.4.30) therefore refuse to load
// the library. Setting VER_FLG_WEAK (0x2) in that one Vernaux entry lets the dynamic loader accept an
// older libstdc++; newer ones satisfy the requirement as before.
//
// Only copies in a project's output or publish folder are edited, never the NuGet cache: the edited
// bytes are written beside the file and renamed over it, so even a hard-linked copy leaves the cache
// untouched. The file keeps its timestamp, so incremental builds see it as up to date and do not copy
// the original over it again. Editing is idempotent.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class ScoreSdeMarkVersionWeak : Task
{
    /// <summary>The shared libraries to edit (missing files are skipped).</summary>
    [Required]
    public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();

    /// <summary>The version whose requirement becomes weak, e.g. GLIBCXX_3.4.32.</summary>
    [Required]
    public string Version { get; set; } = "";

    public override bool Execute()
    {
        foreach (var item in Files)
        {
            string path = item.ItemSpec;
            if (!File.Exists(path)) continue;
            byte[] b = File.ReadAllBytes(path);
            // ELF64 little-endian only (linux-x64 and linux-arm64 builds).
            if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F' || b[4] != 2 || b[5] != 1)
            {
                Log.LogWarning("{0}: not an ELF64 little-endian file; left as is", path);
                continue;
            }
            int changed, found;
            try
            {
                changed = MarkWeak(b, Version, out found);
            }
            catch (Exception e) when (e is ArgumentException || e is IndexOutOfRangeException)
            {
                Log.LogWarning("{0}: unreadable ELF version tables ({1}); left as is", path, e.Message);
                continue;
            }
            if (changed > 0)
            {
                DateTime stamp = File.GetLastWriteTimeUtc(path);
                string tmp = path + ".weak-tmp";
                File.WriteAllBytes(tmp, b);
                File.SetLastWriteTimeUtc(tmp, stamp);
                File.Replace(tmp, path, null); // rename(2): atomic, and a new inode
                Log.LogMessage(MessageImportance.Normal, "ScoreSde: marked {0} weak in {1}", Version, path);
            }
            else if (found == 0)
            {
                Log.LogMessage(MessageImportance.Low, "ScoreSde: {0} does not require {1}", path, Version);
            }
        }
        return !Log.HasLoggedErrors;
    }

    /// <summary>Sets VER_FLG_WEAK on every requirement of <paramref name="version"/>; returns how many
    /// were changed, with <paramref name="found"/> the number of requirements of it.</summary>
    static int MarkWeak(byte[] b, string version, out int found)
    {
        long shoff = BitConverter.ToInt64(b, 0x28);
        int shentsize = BitConverter.ToUInt16(b, 0x3A);
        int shnum = BitConverter.ToUInt16(b, 0x3C);
        int changed = 0;
        found = 0;
        for (int s = 0; s < shnum; s++)
        {
            long sh = shoff + (long)s * shentsize;
            if (BitConverter.ToUInt32(b, (int)sh + 4) != 0x6ffffffe) continue; // SHT_GNU_verneed
            long vn = BitConverter.ToInt64(b, (int)sh + 24);
            int link = (int)BitConverter.ToUInt32(b, (int)sh + 40);
            int count = (int)BitConverter.ToUInt32(b, (int)sh + 44);
            long strtab = BitConverter.ToInt64(b, (int)(shoff + (long)link * shentsize) + 24);
            for (int i = 0; i < count; i++)
            {
                int cnt = BitConverter.ToUInt16(b, (int)vn + 2);
                long aux = vn + BitConverter.ToUInt32(b, (int)vn + 8);
                for (int j = 0; j < cnt; j++)
                {
                    int nameOff = (int)(strtab + BitConverter.ToUInt32(b, (int)aux + 8));
                    int end = nameOff;
                    while (b[end] != 0) end++;
                    if (Encoding.ASCII.GetString(b, nameOff, end - nameOff) == version)
                    {
                        found++;
                        if ((b[aux + 4] & 0x2) == 0)
                        {
                            b[aux + 4] |= 0x2; // VER_FLG_WEAK, in the low byte of vna_flags
                            changed++;
                        }
                    }
                    aux += BitConverter.ToUInt32(b, (int)aux + 12);
                }
                vn += BitConverter.ToUInt32(b, (int)vn + 12);
            }
        }
        return changed;
    }
}
