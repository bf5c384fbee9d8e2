"""The default workload: a fully connected network in PyTorch on scikit-learn's handwritten digits.

What a trial pod runs when the study names no objective, and the worked example of an objective:
``trial.suggest_*`` for the hyperparameters, ``trial.report`` and ``trial.should_prune`` every epoch,
early stopping, and :func:`hpo_trial.checkpoint` every epoch so that a pod lost mid-training resumes
where it stopped. It minimises the **validation cross-entropy loss** (the best epoch's) and records
that epoch's validation accuracy as the user attribute ``val_accuracy``.

The data ships with scikit-learn (no download): 1,797 8x8 images. The originals are split 80/20
before augmentation so no validation digit leaks into training; each training image is shifted by up
to two pixels each way, twice, with a little deterministic noise (50 copies, about 72,000 samples) and each
validation image by up to one pixel (9 copies, about 3,200), which makes one epoch take about 1 to 4
seconds on a 2-core CPU. ``HPO_QUICK_SCAN=1`` (``hpo-trial --quick-scan``) trains on a fixed subset of
8,192 samples instead, for fast scans and smoke tests. The data is held as tensors on the device and
batches are slices of a per-epoch permutation. On a GPU it trains with mixed precision (bfloat16
where supported, float16 with loss scaling otherwise).

Search space (declare parameters in the study with the same kind and log flag to fix their ranges):

============  =========================================  =========
name          suggest                                     default
============  =========================================  =========
lr            ``suggest_float(1e-4, 3e-2, log=True)``
n_layers      ``suggest_int(1, 4)``
width         ``suggest_int(32, 512, log=True)``
dropout       ``suggest_float(0.0, 0.5)``
batch_size    ``suggest_int(32, 256, log=True)``
weight_decay  ``suggest_float(1e-6, 1e-2, log=True)``
epochs        ``suggest_int(5, 20)``                      (maximum; early stopping may end sooner)
============  =========================================  =========
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from torch import nn

import hpo_trial
from hpo_trial.contract import QUICK_SCAN_ENV

__all__ = ["Data", "build_model", "configure_threads", "load_data", "objective", "select_device", "train_steps"]

_logger = logging.getLogger(__name__)

QUICK_SCAN_SAMPLES = 8192
PATIENCE = 3
"""Epochs without a better validation loss before training stops early."""
MIN_IMPROVEMENT = 1e-4
EVAL_BATCH = 4096
NOISE = 0.05
N_CLASSES = 10


@dataclass(frozen=True)
class Data:
    """The training and validation sets, as tensors on the training device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def objective(trial: optuna.Trial) -> float:
    """Train the network with the trial's hyperparameters; return the best validation loss.

    Args:
        trial: The trial (its declared parameters are already set by the operator).

    Returns:
        The lowest validation cross-entropy loss over the epochs trained.

    Raises:
        optuna.TrialPruned: The study's pruner stopped the trial.
    """
    lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
    n_layers = trial.suggest_int("n_layers", 1, 4)
    width = trial.suggest_int("width", 32, 512, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    batch_size = trial.suggest_int("batch_size", 32, 256, log=True)
    weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    epochs = trial.suggest_int("epochs", 5, 20)

    threads = configure_threads()
    device, amp_dtype = select_device()
    quick_scan = os.environ.get(QUICK_SCAN_ENV, "") not in {"", "0", "false", "False"}
    data = load_data(device, quick_scan=quick_scan)
    _logger.info(
        "digits workload on %s%s (%d CPU threads): %d training and %d validation samples%s",
        device,
        f" with {str(amp_dtype).removeprefix('torch.')} autocast" if amp_dtype else "",
        threads,
        len(data.y_train),
        len(data.y_val),
        ", quick scan" if quick_scan else "",
    )

    torch.manual_seed(trial.number)
    model = build_model(data.x_train.shape[1], n_layers, width, dropout).to(device)
    # Fused AdamW on CUDA: one kernel per step instead of several (the small net is launch-bound there).
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    progress = _Progress()
    ckpt = hpo_trial.checkpoint(trial)
    restored = ckpt.load()
    if restored is not None:
        _, state = restored
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        progress = _Progress(**state["progress"])

    while progress.epoch < epochs and progress.stale_epochs < PATIENCE:
        epoch = progress.epoch + 1
        started = time.perf_counter()
        seed = trial.number * 1000 + epoch
        train_loss = _train_epoch(model, optimizer, scaler, data, batch_size, amp_dtype, seed)
        val_loss, val_accuracy = _evaluate(model, data, amp_dtype)
        seconds = time.perf_counter() - started
        _logger.info(
            "epoch %d/%d: train_loss=%.4f val_loss=%.4f val_accuracy=%.4f (%.2f s, %.0f samples/s)",
            epoch,
            epochs,
            train_loss,
            val_loss,
            val_accuracy,
            seconds,
            len(data.y_train) / seconds,
        )
        progress.advance(val_loss, val_accuracy)
        trial.report(val_loss, epoch)
        if trial.should_prune():
            trial.set_user_attr("val_accuracy", progress.best_accuracy)
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (val_loss={val_loss:.4f})")
        ckpt.save(
            epoch,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "progress": progress.__dict__,
            },
        )
    if progress.stale_epochs >= PATIENCE:
        _logger.info("stopped early after epoch %d: no better validation loss for %d epochs", progress.epoch, PATIENCE)
    trial.set_user_attr("val_accuracy", progress.best_accuracy)
    return progress.best_loss


@dataclass
class _Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    best_loss: float = math.inf
    best_accuracy: float = 0.0
    stale_epochs: int = 0

    def advance(self, val_loss: float, val_accuracy: float) -> None:
        self.epoch += 1
        if val_loss < self.best_loss - MIN_IMPROVEMENT:
            self.best_loss, self.best_accuracy, self.stale_epochs = val_loss, val_accuracy, 0
        else:
            self.stale_epochs += 1


def load_data(device: torch.device, *, quick_scan: bool = False) -> Data:
    """The digits, split before augmentation, augmented deterministically, on ``device``.

    Args:
        device: Where the tensors live.
        quick_scan: Keep only a fixed subset of :data:`QUICK_SCAN_SAMPLES` training samples.

    Returns:
        Flattened images scaled to [0, 1] and their labels.
    """
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    n_val = len(labels) // 5
    val, train = order[:n_val], order[n_val:]
    x_train, y_train = _augment(images[train], labels[train], radius=2, draws=2, rng=rng)
    x_val, y_val = _augment(images[val], labels[val], radius=1, draws=1, rng=rng)
    if quick_scan:
        keep = rng.permutation(len(y_train))[:QUICK_SCAN_SAMPLES]
        x_train, y_train = x_train[keep], y_train[keep]
    return Data(
        x_train=torch.from_numpy(x_train).to(device),
        y_train=torch.from_numpy(y_train).to(device),
        x_val=torch.from_numpy(x_val).to(device),
        y_val=torch.from_numpy(y_val).to(device),
    )


def build_model(n_features: int, n_layers: int, width: int, dropout: float) -> nn.Sequential:
    """``n_layers`` hidden layers of ``width`` units (Linear, ReLU, Dropout), then a linear classifier."""
    layers: list[nn.Module] = []
    size = n_features
    for _ in range(n_layers):
        layers += [nn.Linear(size, width), nn.ReLU(), nn.Dropout(dropout)]
        size = width
    layers.append(nn.Linear(size, N_CLASSES))
    return nn.Sequential(*layers)


def _augment(
    images: np.ndarray, labels: np.ndarray, *, radius: int, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Every shift of up to ``radius`` pixels each way (zero-filled), ``draws`` times each.

    Every copy but the unshifted first one gets Gaussian noise (standard deviation :data:`NOISE`).
    """
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius)))
    copies = []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[:, radius + dy : radius + dy + 8, radius + dx : radius + dx + 8]
            for draw in range(draws):
                noisy = draw > 0 or dx != 0 or dy != 0
                copies.append(np.clip(shifted + rng.normal(0.0, NOISE, shifted.shape), 0.0, 1.0) if noisy else shifted)
    x = np.concatenate(copies).reshape(-1, 64).astype(np.float32)
    return x, np.tile(labels, len(copies))


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: Data,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    seed: int,
) -> float:
    """One pass over the training set in a permutation fixed by ``seed`` (so a resumed epoch repeats it)."""
    total = torch.zeros((), device=data.x_train.device)
    for loss_sum, _ in train_steps(model, optimizer, scaler, data, batch_size, amp_dtype, seed):
        total += loss_sum
    return total.item() / len(data.y_train)


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: Data,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    seed: int,
) -> Iterator[tuple[torch.Tensor, int]]:
    """The optimizer steps of one epoch, one batch each, in a permutation of the training set fixed by ``seed``.

    Yields:
        After each step, the batch's summed loss (a tensor on the device, not waited for) and its size.
        A caller that stops early (the benchmark in ``tests/bench/workload.py``) has trained that far.
    """
    model.train()
    device = data.x_train.device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    permutation = torch.randperm(len(data.y_train), generator=generator).to(device)
    for start in range(0, len(permutation), batch_size):
        index = permutation[start : start + batch_size]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated
        scaler.step(optimizer)
        scaler.update()
        yield loss.detach() * len(index), len(index)


def _evaluate(model: nn.Module, data: Data, amp_dtype: torch.dtype | None) -> tuple[float, float]:
    """Validation loss and accuracy."""
    model.eval()
    device = data.x_val.device
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, len(data.y_val), EVAL_BATCH):
            x, y = data.x_val[start : start + EVAL_BATCH], data.y_val[start : start + EVAL_BATCH]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
            loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
    n = len(data.y_val)
    return loss.item() / n, correct.item() / n


def select_device() -> tuple[torch.device, torch.dtype | None]:
    """CUDA with a mixed-precision dtype when a GPU is there; the CPU in full precision otherwise."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), None


def configure_threads() -> int:
    """As many intra-op threads as CPUs this container may use (affinity and cgroup quota), at least 1."""
    cpus: float = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    threads = max(1, math.ceil(cpus))
    torch.set_num_threads(threads)
    return threads
