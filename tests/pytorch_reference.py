"""tsad's networks rebuilt in PyTorch, for the cross-check tests (tests/it/pytorch.rs).

Each model directory holds tsad's model.json; `run` also needs weights.safetensors and
inputs.safetensors (tensor "x", [batch, time, input]) there and writes outputs.safetensors
(tensors "z": the head's raw output, "h" and for LSTM "c": the final state).

    pytorch_reference.py run DIR...    load tsad's weights strictly, run x
    pytorch_reference.py init DIR...   write weights.safetensors with PyTorch's own init
"""
import json
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file


class Net(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        width = cfg["input_size"]
        self.pre = torch.nn.ModuleList()
        for w in cfg.get("pre", []):
            self.pre.append(torch.nn.Linear(width, w))
            width = w
        kw = dict(
            input_size=width,
            hidden_size=cfg["hidden"],
            num_layers=cfg["layers"],
            batch_first=True,
            bidirectional=cfg.get("bidirectional", False),
        )
        arch = cfg["architecture"]
        if arch == "lstm":
            self.rnn = torch.nn.LSTM(**kw)
        elif arch == "gru":
            self.rnn = torch.nn.GRU(**kw)
        else:
            assert cfg.get("activation", "tanh") == "tanh", "nn.RNN has no identity activation"
            self.rnn = torch.nn.RNN(nonlinearity="tanh", **kw)
        width = cfg["hidden"] * (2 if kw["bidirectional"] else 1)
        self.post = torch.nn.ModuleList()
        for w in cfg.get("post", []):
            self.post.append(torch.nn.Linear(width, w))
            width = w
        head = cfg["head"]
        out = 2 * head["channels"] if head["kind"] == "gaussian" else head["classes"]
        self.head = torch.nn.Linear(width, out)

    def forward(self, x):
        cfg, head = self.cfg, self.cfg["head"]
        for layer in self.pre:
            x = torch.tanh(layer(x))
        out, state = self.rnn(x)
        h, c = state if isinstance(state, tuple) else (state, None)
        if head["kind"] == "classifier" and head["mode"] == "many_to_one":
            if cfg.get("bidirectional", False):
                n = cfg["hidden"]
                out = torch.cat([out[:, -1, :n], out[:, 0, n:]], 1)
            else:
                out = out[:, -1]
        for layer in self.post:
            out = torch.tanh(layer(out))
        z = self.head(out)
        if head["kind"] == "gaussian":
            mean, log_var = z.split(head["channels"], -1)
            z = torch.cat([mean, log_var.clamp(-12.0, 12.0)], -1)
        return z, h, c


def main():
    command, dirs = sys.argv[1], [pathlib.Path(d) for d in sys.argv[2:]]
    torch.manual_seed(1234)
    for d in dirs:
        cfg = json.loads((d / "model.json").read_text())["network"]
        net = Net(cfg)
        if command == "init":
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "weights.safetensors"))
            continue
        net.load_state_dict(load_file(str(d / "weights.safetensors")), strict=True)
        x = load_file(str(d / "inputs.safetensors"))["x"]
        with torch.no_grad():
            z, h, c = net(x)
        out = {"z": z.contiguous(), "h": h.contiguous()}
        if c is not None:
            out["c"] = c.contiguous()
        save_file(out, str(d / "outputs.safetensors"))


if __name__ == "__main__":
    main()
