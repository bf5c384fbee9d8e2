"""Benchmark item 5: how fast the default workload trains on the CPU, against a plain DataLoader loop.

The workload (:mod:`hpo_trial.workloads.digits`) holds the data as tensors and takes each batch as a
slice of a per-epoch permutation. The baseline is what a PyTorch tutorial writes: a
``DataLoader(TensorDataset(...), batch_size=..., shuffle=True)`` feeding the same forward, backward
and optimizer step. Both train the same network, built by the workload's own function, on the same
data with the same batch size, in this process, with the intra-op threads the workload would use.
They take turns of :data:`SLICE_SECONDS`, so that load from other processes falls on both alike,
until each has trained for at least :data:`MIN_SECONDS` after an uncounted warm-up.

``make bench`` measures the CPU, as the issue asks. ``python -m tests.bench.workload --device cuda``
measures the same on a GPU, with the workload's mixed precision on both sides; there the baseline keeps
the data on the host and copies each batch over (pinned memory, non-blocking), as the textbook does.
It prints the figures and leaves ``.bench/latest.json`` alone.
"""

from __future__ import annotations

import argparse
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hpo_trial.workloads import digits
from tests.bench.report import Figure, progress, table

MIN_SECONDS = 10.0
"""Training time each side must reach (the issue's minimum), warm-up excluded."""

# A typical quickstart trial: the centre of examples/quickstart.yaml's search space (log-scale centre
# for log parameters), and of the workload's own range for batch_size, which the quickstart leaves out.
N_LAYERS = 2
WIDTH = 64
DROPOUT = 0.25
BATCH_SIZE = 90
LR = 1.7e-3
WEIGHT_DECAY = 1e-4
SEED = 0
WARM_UP_SECONDS = 1.0
"""Training before the clock starts: allocator, autograd graph, optimizer state, thread pool."""
SLICE_SECONDS = 0.5
"""How long each side trains before the other takes its turn."""


def run(quick: bool) -> list[Figure]:
    """Samples per second of the workload's training loop and of the DataLoader loop on the CPU, and their ratio.

    ``quick`` changes nothing: 10 s of training per side is already the minimum the issue sets.
    """
    return measure(torch.device("cpu"), None)


def measure(device: torch.device, amp_dtype: torch.dtype | None) -> list[Figure]:
    """Both loops on ``device``, taking turns, with ``amp_dtype`` autocast (None: full precision)."""
    threads = digits.configure_threads()
    data = digits.load_data(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{threads} intra-op threads"
    progress(
        f"workload: {len(data.y_train)} training samples, {N_LAYERS}x{WIDTH} network, batch {BATCH_SIZE}, "
        f"{where}, >= {MIN_SECONDS:.0f} s of training per side; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    ours, baseline = _Workload(data, amp_dtype), _DataLoaderLoop(data, amp_dtype)
    for side in (ours, baseline):
        side.train_for(WARM_UP_SECONDS)
    while min(ours.seconds, baseline.seconds) < MIN_SECONDS:
        for side in (ours, baseline):
            side.train_for(SLICE_SECONDS)
        progress(
            f"workload: {ours.rate():.0f} samples/s over {ours.seconds:.1f} s, "
            f"DataLoader loop {baseline.rate():.0f} samples/s over {baseline.seconds:.1f} s"
        )
    return [
        Figure(
            "workload_samples_per_s",
            ours.rate(),
            goal="-",
            baseline=baseline.rate(),
            baseline_key="dataloader_samples_per_s",
            ratio_key="workload_speedup_vs_dataloader",
        )
    ]


class _Side(ABC):
    """One way of training, timed: the samples it trained on and the seconds it took, warm-up excluded."""

    def __init__(self, data: digits.Data, amp_dtype: torch.dtype | None) -> None:
        torch.manual_seed(SEED)
        self.device = data.x_train.device
        self.amp_dtype = amp_dtype
        self.model = digits.build_model(data.x_train.shape[1], N_LAYERS, WIDTH, DROPOUT).to(self.device)
        # As the objective builds them: fused AdamW on CUDA, loss scaling only for float16.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=self.device.type == "cuda"
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.total = torch.zeros((), device=self.device)
        self.samples = 0
        self.seconds = 0.0
        self.warm = False

    def train_for(self, seconds: float) -> None:
        """Train for at least ``seconds``; count them and the samples unless this is the warm-up."""
        started = time.perf_counter()
        deadline = started + seconds
        samples = 0
        while time.perf_counter() < deadline:
            samples += self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # count the kernels queued so far, not just their launch
        if self.warm:
            self.samples += samples
            self.seconds += time.perf_counter() - started
        self.warm = True

    @abstractmethod
    def step(self) -> int:
        """One optimizer step on one batch; return the batch's size (0 where an epoch ended instead)."""

    def rate(self) -> float:
        return self.samples / self.seconds


class _Workload(_Side):
    """The workload's own training loop, as ``objective`` runs it.

    That is :func:`hpo_trial.workloads.digits.train_steps`, the running loss summed as a tensor; a new
    epoch (a new permutation) when one ends.
    """

    def __init__(self, data: digits.Data, amp_dtype: torch.dtype | None) -> None:
        super().__init__(data, amp_dtype)
        self.data = data
        self.epoch = 0
        self.steps = self._epoch()

    def _epoch(self) -> Iterator[tuple[torch.Tensor, int]]:
        self.epoch += 1
        return digits.train_steps(
            self.model, self.optimizer, self.scaler, self.data, BATCH_SIZE, self.amp_dtype, self.epoch
        )

    def step(self) -> int:
        stepped = next(self.steps, None)
        if stepped is None:
            self.steps = self._epoch()
            return 0
        loss_sum, size = stepped
        self.total += loss_sum
        return size


class _DataLoaderLoop(_Side):
    """The textbook loop: a shuffling DataLoader over a TensorDataset, feeding the same training step.

    The data stays on the host (pinned on a GPU machine) and each batch is copied to the device; the
    step is ``train_steps``' own, the running loss kept alike.
    """

    def __init__(self, data: digits.Data, amp_dtype: torch.dtype | None) -> None:
        super().__init__(data, amp_dtype)
        self.loader = DataLoader(
            TensorDataset(data.x_train.cpu(), data.y_train.cpu()),
            batch_size=BATCH_SIZE,
            shuffle=True,
            pin_memory=self.device.type == "cuda",
        )
        self.batches = iter(self.loader)

    def step(self) -> int:
        batch = next(self.batches, None)
        if batch is None:
            self.batches = iter(self.loader)
            return 0
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = nn.functional.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.total += loss.detach() * len(y)
        return len(y)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.workload", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: the GPU with the workload's mixed precision (what a trial pod with a GPU runs)",
    )
    args = parser.parse_args()
    if args.device == "cuda":
        device, amp_dtype = digits.select_device()
        if device.type != "cuda":
            parser.error("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False)")
    else:
        device, amp_dtype = torch.device("cpu"), None
    print(table(measure(device, amp_dtype)))


if __name__ == "__main__":
    main()
