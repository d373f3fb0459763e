"""Times the Python ScoreSdeVeScheduler's steps (diffusers' semantics as reproduced by
tests/ScoreSde.Tests/fixtures/make_ve_reference.py; diffusers itself is not installed here) at the
shapes of VeSchedulerBenchmarks: float32, 1000 inference steps, the middle timestep, one generator.

Run: /usr/bin/python3 tests/ScoreSde.Benchmarks/ve_scheduler_python.py [threads...]
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ScoreSde.Tests", "fixtures"))
from make_ve_reference import VeSchedulerReference  # noqa: E402


def per_call(f, seconds=1.0):
    for _ in range(5):
        f()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        f()
        n += 1
    return (time.perf_counter() - start) / n * 1e3


def main():
    threads = [int(a) for a in sys.argv[1:]] or [1]
    s = VeSchedulerReference()
    s.set_timesteps(1000)
    s.set_sigmas(1000)
    t = s.timesteps[500]
    print("PyTorch %s: milliseconds per call (median of 5 one-second runs)" % torch.__version__)
    print("| shape | threads | randn floor | step_pred | step_correct |")
    print("|---|---|---|---|---|")
    for th in threads:
        torch.set_num_threads(th)
        for shape in [(4, 3, 8, 8), (4, 3, 64, 64), (16, 3, 256, 256)]:
            g = torch.Generator().manual_seed(0)
            x, out = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            cases = [lambda: torch.randn(shape, generator=g), lambda: s.step_pred(out, t, x, g),
                     lambda: s.step_correct(out, x, g)]
            medians = [sorted(per_call(f) for _ in range(5))[2] for f in cases]
            print("| %s | %d | %s |" % ("x".join(map(str, shape)), th, " | ".join("%.4f" % m for m in medians)))


if __name__ == "__main__":
    main()
