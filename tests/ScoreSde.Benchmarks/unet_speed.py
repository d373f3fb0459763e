"""PyTorch's side of the U-Net speed comparison, driven call by call by the F# side (UNetSpeed.fs) so
that the two alternate single calls: `dotnet run --project tests/ScoreSde.Benchmarks -c Release --
--unet`.

The network is python/scoresde_unet.py, the PyTorch twin of ScoreSde's U-Net (same layers, same
operations), written as a PyTorch user writes it. Two copies: one in the default layout and one
converted with the channels_last recipe (network and input in torch.channels_last memory format).
Calls, each one read as a line on stdin and answered with one JSON line
{"wall": seconds, "cpu": seconds} (cpu: time.process_time, user + system of all threads):

  forward | forward_cl   eps = net(x, t) on a batch, eval mode, under torch.no_grad() (what sampling does)
  train | train_cl       one denoising score-matching step: t ~ U(eps, 1), z ~ N(0, I),
                         x_t = alpha_t x0 + sigma_t z (VP-SDE, beta 0.1 .. 20),
                         loss = mean |net(x_t, t) - z|^2, zero_grad, backward, torch.optim.Adam step,
                         loss.item()
  sample                 sampling with a fixed budget, as a PyTorch user writes the loop: x ~ N(0, I),
                         then --evaluations Euler-Maruyama steps of the reverse VP-SDE on a uniform grid
                         from t = 1 to 1e-3, one network evaluation each, under torch.no_grad()

The first line written is {"torch": version, "parameters": count, ...}; "quit" ends the process.

  /usr/bin/python3 tests/ScoreSde.Benchmarks/unet_speed.py --config '{"blocksPerLevel": 1}' --batch 64 --threads 2
"""
import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
import scoresde_unet  # noqa: E402

BETA_MIN, BETA_MAX, EPS = 0.1, 20.0, 1e-5


class Case:
    def __init__(self, cfg, batch, channels_last):
        self.net = scoresde_unet.UNet(cfg)
        self.x0 = torch.rand(batch, cfg["channels"], cfg["height"], cfg["width"]) * 2 - 1
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.x0 = self.x0.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=2e-4)
        self.batch = batch

    def forward(self):
        self.net.eval()
        with torch.no_grad():
            self.net(self.x0, torch.rand(self.batch))

    def sample(self, evaluations):
        self.net.eval()
        b = self.batch
        with torch.no_grad():
            x = torch.randn_like(self.x0)
            dt = (1.0 - 1e-3) / evaluations
            for i in range(evaluations):
                t = 1.0 - i * dt
                log_alpha = -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
                sigma = math.sqrt(-math.expm1(2 * log_alpha))
                beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
                eps = self.net(x, torch.full((b,), t))
                # reverse drift: f - g^2 score = -beta x / 2 + beta eps / sigma, stepped backwards by dt
                x = x + dt * (0.5 * beta * x - beta / sigma * eps) + math.sqrt(beta * dt) * torch.randn_like(x)
        return x

    def train(self):
        self.net.train()
        b, x0 = self.batch, self.x0
        t = torch.rand(b) * (1 - EPS) + EPS
        z = torch.randn_like(x0)
        log_alpha = -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
        alpha = torch.exp(log_alpha).reshape(-1, 1, 1, 1)
        sigma = torch.sqrt(-torch.expm1(2 * log_alpha)).reshape(-1, 1, 1, 1)
        loss = (self.net(alpha * x0 + sigma * z, t) - z).square().reshape(b, -1).mean(1).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="{}", help="JSON overrides of scoresde_unet.default_config(1, 28, 28)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--evaluations", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    overrides = json.loads(a.config)
    cfg = scoresde_unet.default_config(overrides.get("channels", 1), overrides.get("height", 28), overrides.get("width", 28))
    cfg.update(overrides)
    plain, cl = Case(cfg, a.batch, False), Case(cfg, a.batch, True)
    calls = {"forward": plain.forward, "train": plain.train, "forward_cl": cl.forward, "train_cl": cl.train,
             "sample": lambda: plain.sample(a.evaluations)}
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": a.batch,
                      "parameters": sum(q.numel() for q in plain.net.parameters())}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        c = time.process_time()
        s = time.perf_counter()
        calls[name]()
        print(json.dumps({"wall": time.perf_counter() - s, "cpu": time.process_time() - c}), flush=True)


if __name__ == "__main__":
    main()
