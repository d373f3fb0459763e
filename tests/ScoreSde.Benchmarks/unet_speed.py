"""PyTorch's side of the U-Net speed comparison (the F# side is UNetSpeed.fs; both run in one benchmark
run, alternating: `dotnet run --project tests/ScoreSde.Benchmarks -c Release -- --unet`).

The network is python/scoresde_unet.py, the PyTorch twin of ScoreSde's U-Net (same layers, same
operations). Timed, after warm-up, one call at a time:

  forward  eps = net(x, t) on a batch, eval mode, under torch.no_grad() (what sampling does)
  train    one denoising score-matching step as a PyTorch user writes it: t ~ U(eps, 1), z ~ N(0, I),
           x_t = alpha_t x0 + sigma_t z (VP-SDE, beta 0.1 .. 20), loss = mean |net(x_t, t) - z|^2,
           zero_grad, backward, torch.optim.Adam step, loss.item()

Prints one JSON object: {"forward": [seconds, ...], "train": [seconds, ...], "torch": version, ...};
with --channels-last also "forward_cl" and "train_cl": the same with the network and the input in
torch.channels_last memory format (PyTorch's recipe for faster CPU convolutions).

  /usr/bin/python3 tests/ScoreSde.Benchmarks/unet_speed.py --config '{"blocksPerLevel": 1}' \
      --batch 64 --threads 2 --warmup 2 --forward 5 --train 3
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
import scoresde_unet  # noqa: E402

BETA_MIN, BETA_MAX, EPS = 0.1, 20.0, 1e-5


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="{}", help="JSON overrides of scoresde_unet.default_config(1, 28, 28)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--forward", type=int, default=5)
    p.add_argument("--train", type=int, default=3)
    p.add_argument("--channels-last", action="store_true", help="also time the channels_last layout")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    overrides = json.loads(a.config)
    cfg = scoresde_unet.default_config(overrides.get("channels", 1), overrides.get("height", 28), overrides.get("width", 28))
    cfg.update(overrides)
    net = scoresde_unet.UNet(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    b = a.batch
    x0 = torch.rand(b, cfg["channels"], cfg["height"], cfg["width"]) * 2 - 1

    def forward():
        with torch.no_grad():
            net(x0, torch.rand(b))

    def train():
        t = torch.rand(b) * (1 - EPS) + EPS
        z = torch.randn_like(x0)
        log_alpha = -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
        alpha = torch.exp(log_alpha).reshape(-1, 1, 1, 1)
        sigma = torch.sqrt(-torch.expm1(2 * log_alpha)).reshape(-1, 1, 1, 1)
        loss = (net(alpha * x0 + sigma * z, t) - z).square().reshape(b, -1).mean(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": b,
           "parameters": sum(q.numel() for q in net.parameters())}
    runs = [("forward", forward, a.forward, False, False), ("train", train, a.train, True, False)]
    if a.channels_last:
        runs += [("forward_cl", forward, a.forward, False, True), ("train_cl", train, a.train, True, True)]
    for name, f, n, training, cl in runs:
        if cl:
            net = net.to(memory_format=torch.channels_last)
            x0 = x0.contiguous(memory_format=torch.channels_last)
        net.train(training)
        for _ in range(a.warmup):
            f()
        times = []
        for _ in range(n):
            s = time.perf_counter()
            f()
            times.append(time.perf_counter() - s)
        out[name] = times
    print(json.dumps(out))


if __name__ == "__main__":
    main()
