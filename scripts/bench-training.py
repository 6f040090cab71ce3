#!/usr/bin/env python3
"""PyTorch's side of the training benchmark (`tsad bench training` is tsad's side).

The same work as tsad's training loop (src/model/train.rs) on the same shape and data: an
LSTM (input 1, hidden H, one layer) with a linear Gaussian head (mean and log-variance),
windows of T steps, batches of B, Gaussian negative log-likelihood, Adam, gradient norm
clipped to 1, a shuffle per epoch and a validation pass after it. The data: N windows of a
noisy sine, plus N/10 for validation. Prints one JSON line: sequences per second over the
timed epochs (the first epoch is a warm-up and is not timed).

Run with the virtualenv scripts/libtorch.sh installs (.tsad/venv/bin/python), the thread
count given (default 1, as tsad's side): PyTorch's intra-op threads (torch.set_num_threads),
the way a PyTorch training loop uses a machine's cores. tsad's side splits each batch over
its threads instead, each running its share with one libtorch thread.
"""
import argparse
import json
import math
import time

import torch


def data(n, steps, seed):
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    t = torch.arange(steps + 1, dtype=torch.float32)
    x = torch.sin(phase + t / 8.0) + 0.1 * torch.randn(n, steps + 1, generator=g)
    return x[:, :-1].unsqueeze(-1), x[:, 1:].unsqueeze(-1)


class Forecaster(torch.nn.Module):
    def __init__(self, hidden, architecture):
        super().__init__()
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[architecture]
        self.rnn = cls(1, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        out = self.head(y)
        return out[..., :1], out[..., 1:].clamp(-12.0, 12.0)


def nll(mean, log_var, target):
    return 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var) + math.log(2 * math.pi)).mean()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--architecture", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sequences", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=4, help="timed epochs, after one warm-up epoch")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    xs, ys = data(a.sequences, a.steps, 1)
    vx, vy = data(max(1, a.sequences // 10), a.steps, 2)
    model = Forecaster(a.hidden, a.architecture)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    timed, started = 0, None
    for epoch in range(a.epochs + 1):
        if epoch == 1:
            started = time.perf_counter()
        order = torch.randperm(a.sequences)
        for i in range(0, a.sequences, a.batch):
            idx = order[i : i + a.batch]
            mean, log_var = model(xs[idx])
            loss = nll(mean, log_var, ys[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        with torch.no_grad():
            mean, log_var = model(vx)
            nll(mean, log_var, vy).item()
        if epoch >= 1:
            timed += a.sequences
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "implementation": "pytorch " + torch.__version__,
        "architecture": a.architecture,
        "hidden": a.hidden,
        "steps": a.steps,
        "batch": a.batch,
        "threads": a.threads,
        "sequences_per_s": timed / elapsed,
        "seconds": elapsed,
    }))


if __name__ == "__main__":
    main()
