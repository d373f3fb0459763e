#!/bin/bash
# Before/after comparison of two builds of this repository, run in alternation (before, after, before,
# after, ...) so that the slow phases of a shared machine fall on both sides alike (docs/performance.md,
# "The SDE value and the single entry point: before and after").
#
#   tests/ScoreSde.Benchmarks/compare/run.sh bdn|fsi BEFORE_REPO AFTER_REPO ROUNDS OUT_DIR
#
# BEFORE_REPO and AFTER_REPO are checkouts with `dotnet build tests/ScoreSde.Benchmarks -c Release` done
# (e.g. `git worktree add --detach ../perf-before 7470e88`).
#   bdn: the BenchmarkDotNet suite of each checkout, `--quick --memory-steps 1000 --exporters json`, one
#        process per side and round, in OUT_DIR/bdn-{before,after}-R.
#   fsi: Before.fsx against BEFORE_REPO's assemblies and After.fsx against AFTER_REPO's (the same cases
#        through each API), OUT_DIR/fsi-{before,after}-R.tsv; BLOCKS (5) rounds of BLOCK_MS (150) per case;
#        FILTER keeps the cases whose name contains it.
# Summarise with `dotnet fsi tests/ScoreSde.Benchmarks/compare/Summary.fsx OUT_DIR`.
set -eu
mode=$1
before=$(realpath "$2")
after=$(realpath "$3")
rounds=$4
out=$(realpath -m "$5")
here=$(dirname "$(realpath "$0")")
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
    for side in before after; do
        if [ "$side" = before ]; then repo=$before; script=Before.fsx; else repo=$after; script=After.fsx; fi
        bin=$repo/tests/ScoreSde.Benchmarks/bin/Release/net10.0
        start=$(date +%s)
        echo "$(date -u +%T) $mode $side round $r, load $(cut -d' ' -f1 /proc/loadavg)" >>"$out/log.txt"
        case $mode in
        bdn)
            mkdir -p "$out/bdn-$side-$r"
            (cd "$out/bdn-$side-$r" &&
                dotnet run --project "$repo/tests/ScoreSde.Benchmarks" -c Release --no-build -- \
                    --quick --memory-steps 1000 --exporters json >out.txt 2>&1)
            ;;
        fsi)
            dotnet fsi --optimize+ -r:"$bin/TorchSharp.dll" -r:"$bin/ScoreSde.dll" -r:"$bin/ScoreSde.CSharp.dll" \
                "$here/$script" "${BLOCKS:-5}" "${BLOCK_MS:-150}" ${FILTER:+"$FILTER"} >"$out/fsi-$side-$r.tsv"
            ;;
        esac
        echo "$(date -u +%T) $mode $side round $r done in $(($(date +%s) - start)) s" >>"$out/log.txt"
    done
done
