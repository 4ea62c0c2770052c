"""Several seeds' training steps as one batched step (``torch.func``), against the same steps one model at a time.

    python benchmarks/seed_batching.py                           # lite0, 64 px, batch 16, K = 2 4
    python benchmarks/seed_batching.py --seeds 2 4 8             # on a GPU

A study cell's step is small: on a GPU it is bound by kernel launches, so one way to run several
cells at once is to stack K models' parameters and run their K steps as one, with
``torch.func.stack_module_state`` + ``functional_call`` under ``vmap(grad(...))``: each convolution
becomes one grouped convolution over the K models, and Adam steps the stacked tensors (elementwise,
so it is K separate Adams). BatchNorm's running statistics are stacked too, so each model keeps its own.

For each K the script first checks the batched gradients: it prints how far the first model's
batched and plain fp32 gradients are from its float64 ones (relative to the largest gradient), then
times rounds of K steps both ways, alternating, and prints milliseconds
per round and the ratio batched / sequential (below 1: batching wins). Same model, same data, same
fused Adam, on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_fastai import host  # noqa: E402


def one_round(models: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer], xs: torch.Tensor, ys: torch.Tensor) -> None:
    """One training step of each model on its own batch, one model after the other."""
    for model, optimizer, x, y in zip(models, optimizers, xs, ys):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class BatchedSeeds:
    """K copies of one architecture, stepped together: stacked parameters and buffers, one vmapped step."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        self.base = copy.deepcopy(models[0]).to("meta")
        params, self.buffers = stack_module_state(models)
        self.params = {name: p.detach() for name, p in params.items()}
        device = next(iter(self.params.values())).device
        self.optimizer = torch.optim.Adam(list(self.params.values()), fused=device.type in ("cpu", "cuda"))
        self.gradients = vmap(grad(self._loss), in_dims=(0, 0, 0, 0))

    def _loss(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.base, (params, buffers), (x,)), y)

    def step(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        gradients = self.gradients(self.params, self.buffers, xs, ys)
        for name, p in self.params.items():
            p.grad = gradients[name]
        self.optimizer.step()


def gradient_errors(models: list[torch.nn.Module], xs: torch.Tensor, ys: torch.Tensor) -> tuple[float, float]:
    """How far the first model's fp32 gradients are from its float64 ones, batched and one model at a
    time: the largest difference, relative to the largest float64 gradient. Both are rounding, and
    comparing them to float64 says which is closer (a per-tensor ratio would not do: some BatchNorm
    biases get gradients of 1e-7, zero but for rounding). Works on copies; the timed models are not
    stepped."""
    copies = [copy.deepcopy(m) for m in models]
    batched = BatchedSeeds(copies)
    stacked = batched.gradients(batched.params, batched.buffers, xs, ys)
    single = copies[0]
    F.cross_entropy(single(xs[0]), ys[0]).backward()
    exact = copy.deepcopy(models[0]).double()
    F.cross_entropy(exact(xs[0].double()), ys[0]).backward()
    exact_grads = dict(exact.named_parameters())
    scale = max(p.grad.abs().max().item() for p in exact.parameters()) or 1.0

    def error(gradient_of) -> float:
        return max((gradient_of(name).double() - p.grad).abs().max().item() for name, p in exact_grads.items()) / scale

    single_grads = dict(single.named_parameters())
    return error(lambda name: stacked[name][0]), error(lambda name: single_grads[name].grad)


def timed(step, device: torch.device, rounds: int) -> float:
    """Median milliseconds of ``rounds`` calls of ``step`` after 3 untimed ones."""
    for _ in range(3):
        step()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 4], help="K: how many models are stepped together")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{args.model}, {args.size} px, batch {args.batch} per model, fp32, NCHW, fused Adam; {host()}")
    for k in args.seeds:
        torch.manual_seed(0)
        models = [timm.create_model(args.model, num_classes=2).to(device) for _ in range(k)]
        xs = torch.randn(k, args.batch, 3, args.size, args.size, device=device)
        ys = torch.randint(0, 2, (k, args.batch), device=device)
        batched_error, single_error = gradient_errors(models, xs, ys)
        optimizers = [torch.optim.Adam(m.parameters(), fused=device.type in ("cpu", "cuda")) for m in models]
        batched = BatchedSeeds(models)
        results: dict[str, list[float]] = {"sequential": [], "batched": []}
        for _ in range(2):  # alternate, so that neither always runs on a warmer process
            results["sequential"].append(timed(lambda: one_round(models, optimizers, xs, ys), device, args.rounds))
            results["batched"].append(timed(lambda: batched.step(xs, ys), device, args.rounds))
        sequential, together = min(results["sequential"]), min(results["batched"])
        print(f"K={k}: sequential {sequential:.1f} ms, batched {together:.1f} ms per round of {k} steps; "
              f"ratio batched / sequential {together / sequential:.2f}; gradient error against float64: "
              f"batched {batched_error:.1e}, one model {single_error:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
