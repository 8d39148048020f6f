"""fit() and evaluate(): seeded, early-stopped, best-checkpoint training on CPU or CUDA, under torchrun too."""
from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import Train
from pipeline.train.distributed import ShardedBatchSampler, World, all_reduce_sum, world
from pipeline.train.freezing import freeze_frozen_norms

logger = logging.getLogger(__name__)

# loss_fn(model, x, y, idx, progress in [0, 1]) -> (loss, logits)
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, float],
                  tuple[torch.Tensor, torch.Tensor]]


@dataclass
class FitResult:
    best_top1: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_time: bool = False


class Indexed(torch.utils.data.Dataset):
    """Adds the sample index, so losses can look up per-sample data (cached teacher logits)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, y, i


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    def loss(model, x, y, idx, progress):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    return loss


def memory_format_of(model) -> torch.memory_format:
    """channels_last when the model's first 4-d weight is stored NHWC, else contiguous."""
    for p in model.parameters():
        if p.ndim == 4:
            nhwc = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            return torch.channels_last if nhwc else torch.contiguous_format
    return torch.contiguous_format


class channels_last_eval:
    """Eval mode in NHWC for the duration of a `with` block; the model's own memory format and
    mode come back after it. Inference in NHWC is about 2x faster on CPU (oneDNN) for these
    networks, and batches of a few dozen images keep activations in cache."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.format, self.training = memory_format_of(self.model), self.model.training
        self.model.eval().to(memory_format=torch.channels_last)
        return self.model

    def __exit__(self, *exc):
        self.model.to(memory_format=self.format).train(self.training)


@torch.no_grad()
def predict(model, dataset, device: torch.device, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) over a whole dataset, in order, in eval mode."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    logits, targets = [], []
    with channels_last_eval(model):
        for x, y in loader:
            logits.append(model(x.to(device).contiguous(memory_format=torch.channels_last)).float().cpu())
            targets.append(torch.as_tensor(y))
    return torch.cat(logits), torch.cat(targets)


def correct(model, dataset, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """Per image, whether the model's top-1 is the label (bool [N]), for paired comparisons."""
    logits, targets = predict(model, dataset, device, batch_size)
    return (logits.argmax(1) == targets).numpy()


def top1_of(right: np.ndarray) -> float:
    """Top-1 (%) of a `correct` mask, computed as `evaluate` computes it (equal numbers)."""
    return 100.0 * torch.from_numpy(right).float().mean().item()


def evaluate(model, dataset, device: torch.device, batch_size: int = 32) -> dict:
    """Val top-1 (%) and mean cross-entropy."""
    logits, targets = predict(model, dataset, device, batch_size)
    return {"top1": 100.0 * (logits.argmax(1) == targets).float().mean().item(),
            "loss": F.cross_entropy(logits, targets).item()}


def _time_is_up(mine: bool, device: torch.device, w: World) -> bool:
    """Whether any rank's clock ran out: every rank must leave the epoch at the same batch, or
    the others would wait forever in DDP's next gradient all-reduce."""
    if not w.distributed:
        return mine
    return all_reduce_sum(device, int(mine))[0] > 0


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def fit(model, train_set, val_set, cfg: Train, device: torch.device, seed: int,
        param_groups: list[dict], loss_fn: Optional[LossFn] = None,
        on_epoch_start: Optional[Callable[[torch.nn.Module, int], None]] = None,
        desc: str = "train", num_workers: int = 0, start_is_candidate: bool = False,
        max_seconds: Optional[float] = None) -> FitResult:
    """Train with AdamW + warm-up/cosine schedule, early stopping on val top-1, best weights restored.

    `param_groups` carry an `lr_scale` (layer-wise decay). Under torchrun the model is wrapped in
    DDP and each rank takes its share of every global batch (see ShardedBatchSampler).
    `start_is_candidate`: the weights before training are scored as epoch 0 and kept when no
    epoch beats them (a fitted linear-probe head is never thrown away for a worse fine-tune).
    `max_seconds`: stop when the training time runs out, mid-epoch, and score what was reached.
    With `cfg.ema` the weight average is what is scored and kept.
    """
    from tqdm import tqdm
    from pipeline.train.ema import WeightAverage
    from pipeline.train.mixing import Mixer
    w: World = world()
    torch.manual_seed(seed)
    loss_fn = loss_fn or cross_entropy(cfg.label_smoothing)
    model.to(device)
    if cfg.channels_last:   # convolutions on NHWC tensors: faster oneDNN/cuDNN kernels
        model.to(memory_format=torch.channels_last)
    mixer = Mixer.from_augment(cfg.augment, len(getattr(train_set, "classes", ())), seed)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    sampler = ShardedBatchSampler(len(train_set), cfg.batch_size, seed, w)
    loader = torch.utils.data.DataLoader(Indexed(train_set), batch_sampler=sampler,
                                         num_workers=num_workers)
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp
                                  and not torch.cuda.is_bf16_supported())
    total, warmup = cfg.epochs * len(sampler), cfg.warmup_epochs * len(sampler)
    best = FitResult(best_top1=-1.0, best_epoch=-1)
    best_state, since_best, step, start = None, 0, 0, time.time()
    if start_is_candidate:
        val = evaluate(model, val_set, device)
        best.history.append({"epoch": 0, "val_top1": val["top1"], "val_loss": val["loss"], "seconds": 0.0})
        best.best_top1, best.best_epoch, best_state = val["top1"], 0, copy.deepcopy(model.state_dict())
        if w.is_main:
            logger.info(f"  {desc} start: val {val['top1']:.2f}%")
    net, trainable, out_of_time = model, None, False
    for epoch in range(cfg.epochs):
        if on_epoch_start:
            on_epoch_start(model, epoch)
        now_trainable = tuple(p.requires_grad for p in model.parameters())
        if w.distributed and now_trainable != trainable:  # DDP buckets follow requires_grad
            net = torch.nn.parallel.DistributedDataParallel(model)
        trainable = now_trainable
        sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        model.train()
        freeze_frozen_norms(model, all_norms=cfg.freeze_norm_stats)
        seen, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                   disable=True if not w.is_main else None)  # None: off when not a TTY
        for x, y, idx in bar:
            for g in optimizer.param_groups:
                g["lr"] = _lr_at(step, total, warmup, cfg.lr) * g.get("lr_scale", 1.0)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x, target = mixer(x, y, step) if mixer else (x, y)
            with _autocast(device, cfg.amp):
                loss, logits = loss_fn(net, x, target, idx, step / max(1, total))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if average:
                average.update(model)
            step += 1
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
            if max_seconds is not None and _time_is_up(time.time() - start > max_seconds, device, w):
                out_of_time = True
                break
        if w.distributed:  # each rank saw its share: report the epoch over the global batches
            seen, correct, loss_sum = all_reduce_sum(device, seen, correct, loss_sum)
        scored = average.module if average else model
        val = evaluate(scored, val_set, device)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
               "train_top1": 100.0 * correct / max(1, seen), "val_top1": val["top1"],
               "val_loss": val["loss"], "lr": _lr_at(max(0, step - 1), total, warmup, cfg.lr),
               "seconds": round(time.time() - start, 2)}
        best.history.append(row)
        if w.is_main:
            logger.info(f"  {desc} epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                        f"train {row['train_top1']:.2f}% val {val['top1']:.2f}%"
                        + (" (weight average)" if average else "")
                        + (" (time budget spent)" if out_of_time else ""))
        if val["top1"] > best.best_top1:
            best.best_top1, best.best_epoch, since_best = val["top1"], epoch + 1, 0
            best_state = copy.deepcopy(scored.state_dict())
        else:
            since_best += 1
            if since_best >= cfg.patience:
                break
        if out_of_time:
            break
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)   # checkpoints and exporters expect NCHW weights
    best.seconds = time.time() - start
    best.stopped_by_time = out_of_time
    return best
