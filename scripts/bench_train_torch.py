#!/usr/bin/env python3
"""The PyTorch anchor of scripts/bench-train.sh: the mammo-train network (src/train/model.rs) and
its masked multi-task loss (src/train/loss.rs) built layer for layer in PyTorch, timed for one
optimizer step (forward, loss, backward, AdamW) on a synthetic batch with every label present.
Prints one JSON line with the fields of `mammo-train bench-step`.

`--sgemm` instead prints the float32 matrix-multiply speed numpy reaches on this machine (the
practical peak FLOP/s the table's shares are taken of).
"""
import argparse
import json
import os
import time


def sgemm_gflops(n=2048, reps=10):
    import numpy as np

    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    dt = (time.perf_counter() - t0) / reps
    return 2 * n**3 / dt / 1e9


def build(torch, base, vendors=11, hidden=64):
    nn = torch.nn

    def conv_bn(cin, cout, k, s):
        p = 1 if k == 3 else 0
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def up_bn(cin, cout):
        return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def head(d, out):
        return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out))

    c = base
    ch = [c, 2 * c, 4 * c, 8 * c]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, c, 4, 4)
            layers = []
            for i in range(3):
                layers += [conv_bn(ch[i], ch[i + 1], 3, 2), conv_bn(ch[i + 1], ch[i + 1], 3, 1)]
            self.encoder = nn.Sequential(*layers)
            d = 8 * c
            self.heads = nn.ModuleList([head(d, k) for k in (1, 1, 4, 1, vendors, 2)])
            self.decoder = nn.Sequential(up_bn(8 * c, 4 * c), up_bn(4 * c, 2 * c), up_bn(2 * c, c))
            self.mask = nn.Conv2d(c, 1, 1)
            self.recon = nn.Conv2d(c, 1, 1)

        def forward(self, x):
            target = torch.nn.functional.avg_pool2d(x, 4, 4)
            f = self.encoder(self.stem(x))
            pooled = f.mean(dim=(2, 3))
            d = self.decoder(f)
            return [h(pooled) for h in self.heads], self.mask(d), self.recon(d), target

    return Net()


def loss_fn(torch, out, t):
    """The same terms and weights as loss.rs (every label present, so masks are all ones)."""
    F = torch.nn.functional
    (cancer, normal, density, percent, vendor, view), mask, recon, target = out
    n = cancer.shape[0]
    l_cancer = F.binary_cross_entropy_with_logits(cancer, t["cancer"])
    l_normal = F.binary_cross_entropy_with_logits(normal, t["normal"])
    l_density = F.cross_entropy(density, t["density"])
    diff = (torch.sigmoid(percent) - t["percent"]).abs()
    delta = 0.05
    quad = diff.clamp(max=delta)
    l_percent = ((quad * quad * 0.5 + (diff - quad) * delta) / delta).mean()
    l_vendor = F.cross_entropy(vendor, t["vendor"])
    l_view = F.cross_entropy(view, t["view"])
    p = torch.sigmoid(mask).reshape(n, -1)
    y = t["mask"].reshape(n, -1)
    dice = (2 * (p * y).sum(1) + 1) / (p.sum(1) + y.sum(1) + 1)
    bce = F.binary_cross_entropy_with_logits(mask.reshape(n, -1), y, reduction="none").mean(1)
    l_mask = (1 - dice + bce).mean()
    l_recon = ((recon - target) ** 2).mean()
    w = (1.0, 0.5, 0.5, 0.5, 0.2, 0.2, 0.5, 0.2)
    terms = (l_cancer, l_normal, l_density, l_percent, l_vendor, l_view, l_mask, l_recon)
    return sum(wi * li for wi, li in zip(w, terms))


def macs(h, w, c, vendors=11, hidden=64):
    """Multiply-accumulates per image: MtlConfig::macs in src/train/model.rs."""
    total = (h // 4) * (w // 4) * 16 * c
    ch = [c, 2 * c, 4 * c, 8 * c]
    for i in range(3):
        pos = (h >> (3 + i)) * (w >> (3 + i))
        total += pos * 9 * ch[i] * ch[i + 1] + pos * 9 * ch[i + 1] * ch[i + 1]
    d = 8 * c
    for o in (1, 1, 4, 1, vendors, 2):
        total += d * hidden + hidden * o
    for i, (a, b) in enumerate([(8 * c, 4 * c), (4 * c, 2 * c), (2 * c, c)]):
        total += (h >> (5 - i)) * (w >> (5 - i)) * 4 * a * b
    return total + 2 * (h // 4) * (w // 4) * c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sgemm", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    if a.sgemm:
        print(json.dumps({"sgemm_gflops": sgemm_gflops()}))
        return
    import torch

    torch.manual_seed(1)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    net = build(torch, a.base).to(dev).train()
    # Burn's AdamW defaults (burn-optim 0.21): betas 0.9/0.999, eps 1e-5, weight decay 1e-4
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, eps=1e-5, weight_decay=1e-4)
    n, hh, ww = a.batch, a.height, a.width
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n, 1, hh, ww, generator=g) - 0.5
    t = {
        "cancer": (torch.arange(n) % 2 == 0).float().reshape(n, 1),
        "normal": (torch.arange(n) % 3 == 0).float().reshape(n, 1),
        "density": torch.arange(n) % 4,
        "percent": (torch.arange(n) * 7 % 100).float().reshape(n, 1) / 100,
        "vendor": torch.arange(n) % 11,
        "view": torch.arange(n) % 2,
        "mask": (x[:, :, ::4, ::4] > 0).float(),
    }
    loss = float("nan")
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        xb = x.to(dev)
        tb = {k: v.to(dev) for k, v in t.items()}
        l = loss_fn(torch, net(xb), tb)
        loss = l.item()
        opt.zero_grad(set_to_none=True)
        l.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / a.steps
    ips = n / per_step
    print(json.dumps({
        "backend": "pytorch " + torch.__version__,
        "device": a.device,
        "height": hh, "width": ww, "base": a.base, "batch": n, "steps": a.steps,
        "ms_per_step": per_step * 1e3,
        "images_per_s": ips,
        "gflops": ips * macs(hh, ww, a.base) * 6 / 1e9,
        "loss": loss,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
