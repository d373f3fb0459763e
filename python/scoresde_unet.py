"""The score U-Net of ScoreSde (src/ScoreSde/UNet.fs) written in PyTorch, written for this project.

Same architecture, same registered names, so that state dicts move across by name:

    fourier_weights                       buffer [F/2], fixed N(0, scale^2) frequencies
    time_dense0, time_dense1              Linear: Fourier features -> T -> T
    label_embedding                       Parameter [classes + 1, T] (class-conditional only)
    conv_in                               Conv2d 3x3: C -> base
    down.<i>                              ResBlock(+Attention) ("res", "attn") or Downsample ("conv")
    mid_res1, mid_attn, mid_res2          the middle
    up.<i>                                ResBlock(+Attention) on [h, skip], or Upsample ("conv")
    norm_out, conv_out                    GroupNorm, Conv2d 3x3: base -> C

`forward(x, t)` predicts the noise eps(x, t) for t in [0, 1] (one value per batch element or one for
all); a class-conditional network then uses the null label (= classes). `forward_labels(x, t, y)`
takes labels. Both are scriptable (torch.jit.script) for TorchSharp's `torch.jit.load`.

The config dict uses the keys of ScoreSde's model files (config.json, "network"): channels, height,
width, baseChannels, channelMultipliers, blocksPerLevel, attentionResolutions, dropout, groups,
fourierFeatures, fourierScale, timeChannels, classes.
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn



def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tch: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = _conv(cin, cout, 3)
        self.temb = nn.Linear(tch, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(cout, cout, 3)
        self.skip = _conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb_act)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * (1.0 / math.sqrt(2.0))


class Attention(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.qkv = _conv(channels, 3 * channels, 1)
        self.proj = _conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, h * w)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * (1.0 / math.sqrt(c)), dim=-1)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return (x + self.proj(out)) * (1.0 / math.sqrt(2.0))


class LevelBlock(nn.Module):
    """A residual block and optional attention; pushes (down) or pops (up) a skip connection."""

    def __init__(self, res: ResBlock, attn: Optional[Attention], pops: bool):
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()
        self.pops = pops

    def forward(self, h: torch.Tensor, temb_act: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        if self.pops:
            h = torch.cat([h, skips.pop()], dim=1)
        h = self.attn(self.res(h, temb_act))
        if not self.pops:
            skips.append(h)
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv(channels, channels, 3, stride=2)

    def forward(self, h: torch.Tensor, temb_act: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        h = self.conv(h)
        skips.append(h)
        return h


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv(channels, channels, 3)

    def forward(self, h: torch.Tensor, temb_act: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        nxt = skips[-1]
        h = F.interpolate(h, size=[nxt.shape[2], nxt.shape[3]], mode="nearest")
        return self.conv(h)


class UNet(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        base, mults, blocks = cfg["baseChannels"], cfg["channelMultipliers"], cfg["blocksPerLevel"]
        groups, tch, drop = cfg["groups"], cfg["timeChannels"], cfg["dropout"]
        self.classes = int(cfg["classes"])
        heights = [cfg["height"]]
        for _ in mults[1:]:
            heights.append((heights[-1] + 1) // 2)

        def block(cin: int, cout: int, level: int, pops: bool) -> LevelBlock:
            attn = Attention(cout, groups) if heights[level] in cfg["attentionResolutions"] else None
            return LevelBlock(ResBlock(cin, cout, tch, groups, drop), attn, pops)

        self.register_buffer("fourier_weights", torch.randn(cfg["fourierFeatures"] // 2) * cfg["fourierScale"])
        self.time_dense0 = nn.Linear(cfg["fourierFeatures"], tch)
        self.time_dense1 = nn.Linear(tch, tch)
        if self.classes > 0:
            self.label_embedding = nn.Parameter(torch.randn(self.classes + 1, tch))
        else:
            self.label_embedding = nn.Parameter(torch.zeros(0))  # unused; removed from the state dict below
        self.conv_in = _conv(cfg["channels"], base, 3)
        down: List[nn.Module] = []
        skips = [base]
        cur = base
        for level, mult in enumerate(mults):
            for _ in range(blocks):
                down.append(block(cur, base * mult, level, False))
                cur = base * mult
                skips.append(cur)
            if level < len(mults) - 1:
                down.append(Downsample(cur))
                skips.append(cur)
        self.down = nn.ModuleList(down)
        self.mid_res1 = ResBlock(cur, cur, tch, groups, drop)
        self.mid_attn = Attention(cur, groups) if heights[-1] in cfg["attentionResolutions"] else nn.Identity()
        self.mid_res2 = ResBlock(cur, cur, tch, groups, drop)
        up: List[nn.Module] = []
        for level in reversed(range(len(mults))):
            for _ in range(blocks + 1):
                up.append(block(cur + skips.pop(), base * mults[level], level, True))
                cur = base * mults[level]
            if level > 0:
                up.append(Upsample(cur))
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(groups, base, eps=1e-6)
        self.conv_out = _conv(base, cfg["channels"], 3)
        if self.classes == 0:
            del self.label_embedding
            self.label_embedding = None

    def _forward(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        batch = x.shape[0]
        tt = t.to(self.fourier_weights.dtype).reshape(-1, 1)
        if tt.shape[0] == 1 and batch != 1:
            tt = tt.expand(batch, 1)
        angles = tt * self.fourier_weights.reshape(1, -1) * (2.0 * math.pi)
        temb = self.time_dense1(F.silu(self.time_dense0(torch.cat([angles.sin(), angles.cos()], dim=1))))
        table = self.label_embedding
        if table is not None:
            if labels is None:
                ids = torch.full([batch], self.classes, dtype=torch.long, device=x.device)
            else:
                ids = labels.reshape(-1)
                if ids.shape[0] == 1 and batch != 1:
                    ids = ids.expand(batch)
            temb = temb + table.index_select(0, ids)
        act = F.silu(temb)
        h = self.conv_in(x.to(self.fourier_weights.dtype))
        skips: List[torch.Tensor] = [h]
        for m in self.down:
            h = m(h, act, skips)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, act)), act)
        for m in self.up:
            h = m(h, act, skips)
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._forward(x, t, None)

    @torch.jit.export
    def forward_labels(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._forward(x, t, labels)


def default_config(channels: int, height: int, width: int) -> dict:
    """The same defaults as UNet.defaultConfig in F#."""
    lowest = height
    for _ in range(2):
        lowest = (lowest + 1) // 2
    return {
        "channels": channels, "height": height, "width": width, "baseChannels": 32,
        "channelMultipliers": [1, 2, 2], "blocksPerLevel": 2, "attentionResolutions": [lowest],
        "dropout": 0.0, "groups": 8, "fourierFeatures": 32, "fourierScale": 16.0,
        "timeChannels": 128, "classes": 0,
    }


# ---- ScoreSde model directories: config.json + weights.bin (TorchSharp's state-dict format) ----
#
# weights.bin, as TorchSharp's Module.save writes it: the entry count (LEB128), then per entry the name
# (.NET BinaryWriter string: LEB128 byte length, UTF-8 bytes), the element type (LEB128: 6 float32,
# 7 float64, 4 int64), the dimension count and each size (LEB128), and the raw little-endian elements.

_TYPES = {6: torch.float32, 7: torch.float64, 4: torch.int64}
_CODES = {v: k for k, v in _TYPES.items()}


def _write_leb128(out, value: int):
    while True:
        byte = value & 0x7F
        value >>= 7
        out.write(bytes([byte | (0x80 if value else 0)]))
        if not value:
            return


def _read_leb128(data: bytes, pos: int):
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def read_weights(path: str) -> dict:
    """A state dict (name -> tensor) from a TorchSharp weights file."""
    with open(path, "rb") as f:
        data = f.read()
    count, pos = _read_leb128(data, 0)
    state = {}
    for _ in range(count):
        length, pos = _read_leb128(data, pos)
        name = data[pos:pos + length].decode("utf-8")
        pos += length
        code, pos = _read_leb128(data, pos)
        if code not in _TYPES:
            raise ValueError(f"{path}: entry {name} has element type {code}, not float32/float64/int64")
        rank, pos = _read_leb128(data, pos)
        shape = []
        for _ in range(rank):
            size, pos = _read_leb128(data, pos)
            shape.append(size)
        dtype = _TYPES[code]
        n = 1
        for s in shape:
            n *= s
        nbytes = n * torch.tensor([], dtype=dtype).element_size()
        state[name] = torch.frombuffer(bytearray(data[pos:pos + nbytes]), dtype=dtype).reshape(shape).clone()
        pos += nbytes
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} bytes after the last entry")
    return state


def write_weights(path: str, state: dict):
    """Write a state dict in TorchSharp's format (loads with ScoreSde's ModelFile and Module.load)."""
    with open(path, "wb") as out:
        _write_leb128(out, len(state))
        for name, tensor in state.items():
            encoded = name.encode("utf-8")
            _write_leb128(out, len(encoded))
            out.write(encoded)
            tensor = tensor.detach().cpu().contiguous()
            _write_leb128(out, _CODES[tensor.dtype])
            _write_leb128(out, tensor.dim())
            for s in tensor.shape:
                _write_leb128(out, s)
            out.write(tensor.numpy().tobytes())


def load_model_dir(directory: str) -> UNet:
    """The U-Net of a ScoreSde model directory (network type "unet"), weights loaded, in eval mode."""
    import json
    import os
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    network = config["network"]
    if network.get("type") != "unet":
        raise ValueError(f"{directory}: network type {network.get('type')!r}, expected 'unet'")
    net = UNet(network)
    if config.get("dtype") == "float64":
        net = net.double()
    net.load_state_dict(read_weights(os.path.join(directory, "weights.bin")), strict=True)
    return net.eval()


def save_model_dir(directory: str, net: UNet, network: dict, sde: dict, pixels: str = "centred"):
    """Write a ScoreSde model directory for a U-Net trained in PyTorch: config.json (format version 1,
    noise output, time scale 1) and weights.bin. `network` is the config dict the net was built from;
    `sde` e.g. {"type": "vp", "betaMin": 0.1, "betaMax": 20.0}."""
    import json
    import os
    os.makedirs(directory, exist_ok=True)
    dtype = next(net.parameters()).dtype
    config = {
        "format": "scoresde-model", "version": 1, "network": dict(network, type="unet"),
        "dtype": "float64" if dtype == torch.float64 else "float32", "output": "noise", "timeScale": 1.0,
        "sde": sde, "pixels": pixels,
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_weights(os.path.join(directory, "weights.bin"), net.state_dict())


def _main(argv):
    """python3 python/scoresde_unet.py check MODEL_DIR X.npy T.npy EPS.npy
    Load a U-Net model directory saved by ScoreSde (.NET) and compare its PyTorch outputs on x, t with
    the outputs .NET computed (EPS.npy): prints the largest absolute difference."""
    import numpy as np
    if len(argv) != 5 or argv[0] != "check":
        print(_main.__doc__)
        return 2
    net = load_model_dir(argv[1])
    dtype = next(net.parameters()).dtype
    x = torch.from_numpy(np.load(argv[2])).to(dtype)
    t = torch.from_numpy(np.load(argv[3])).to(dtype)
    expected = np.load(argv[4])
    with torch.no_grad():
        out = net(x, t).numpy()
    print(f"PyTorch {torch.__version__} vs .NET: max |difference| {np.abs(out - expected).max():.3g} "
          f"(max |output| {np.abs(expected).max():.3g}, {out.dtype})")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(_main(sys.argv[1:]))
