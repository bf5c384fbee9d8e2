"""Benchmark item 5: how fast the default workload trains on the CPU, against a plain DataLoader loop.

The workload (:mod:`hpo_trial.workloads.digits`) holds the data as tensors and takes each batch as a
slice of a per-epoch permutation. The baseline is what a PyTorch tutorial writes: a
``DataLoader(TensorDataset(...), batch_size=..., shuffle=True)`` feeding the same forward, backward
and optimizer step. Both train the same network, built by the workload's own function, on the same
data with the same batch size, in this process, with the intra-op threads the workload would use.
They take turns of :data:`SLICE_SECONDS`, so that load from other processes falls on both alike,
until each has trained for at least :data:`MIN_SECONDS` after an uncounted warm-up.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hpo_trial.workloads import digits
from tests.bench.report import Figure, progress

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
    """Samples per second of the workload's training loop and of the DataLoader loop, and their ratio.

    ``quick`` changes nothing: 10 s of training per side is already the minimum the issue sets.
    """
    threads = digits.configure_threads()
    data = digits.load_data(torch.device("cpu"))
    progress(
        f"workload: {len(data.y_train)} training samples, {N_LAYERS}x{WIDTH} network, "
        f"batch {BATCH_SIZE}, {threads} intra-op threads, >= {MIN_SECONDS:.0f} s of training per side; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    ours, baseline = _Workload(data), _DataLoaderLoop(data)
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

    def __init__(self, data: digits.Data) -> None:
        torch.manual_seed(SEED)
        self.model = digits.build_model(data.x_train.shape[1], N_LAYERS, WIDTH, DROPOUT)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
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
    """The workload's own training loop, as ``objective`` runs it on the CPU.

    That is :func:`hpo_trial.workloads.digits.train_steps` with no autocast and a disabled loss scaler,
    the running loss summed as a tensor; a new epoch (a new permutation) when one ends.
    """

    def __init__(self, data: digits.Data) -> None:
        super().__init__(data)
        self.data = data
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)  # what objective builds off the GPU
        self.epoch = 0
        self.steps = self._epoch()
        self.total = torch.zeros(())

    def _epoch(self) -> Iterator[tuple[torch.Tensor, int]]:
        self.epoch += 1
        return digits.train_steps(self.model, self.optimizer, self.scaler, self.data, BATCH_SIZE, None, self.epoch)

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

    The step is ``train_steps``' own without its no-op autocast and scaler, the running loss kept alike.
    """

    def __init__(self, data: digits.Data) -> None:
        super().__init__(data)
        self.loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=BATCH_SIZE, shuffle=True)
        self.batches = iter(self.loader)
        self.total = torch.zeros(())

    def step(self) -> int:
        batch = next(self.batches, None)
        if batch is None:
            self.batches = iter(self.loader)
            return 0
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated
        self.optimizer.step()
        self.total += loss.detach() * len(y)
        return len(y)
