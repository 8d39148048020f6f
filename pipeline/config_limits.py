"""Sizes no machine here can hold, refused when the config loads rather than minutes into a stage.

A batch is `batch × 3 × size² × 4` bytes as a float tensor, and a training step holds several
copies of it (decoded images, the normalised tensor, its channels-last copy, the first activation
map): COPIES is a floor on that, so only a batch that surely cannot fit is refused, never one that
merely might be slow.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import Config

COPIES = 4
NOMINAL_SIZE = 224         # input_size: null means the backbone's own size, 224 for most


def memory_bytes() -> int | None:
    """Physical memory, or the cgroup limit of this process when that is lower; None if unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _batches(cfg: Config) -> list[tuple[str, int]]:
    """(key, batch size) of every batch of input images a stage builds at the model's size."""
    return [("finetune.train.batch_size", cfg.finetune.train.batch_size),
            ("distill.train.batch_size", cfg.distill.train.batch_size),
            ("prune.recover.batch_size", cfg.prune.recover.batch_size),
            ("prune.budget_batch", cfg.prune.budget_batch),
            ("benchmark.batch_sizes", max(cfg.benchmark.batch_sizes))]


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_sizes(cfg: Config, memory: int | None = None) -> str | None:
    """A one-line refusal when a batch of input images cannot fit in this machine's memory."""
    memory = memory if memory is not None else memory_bytes()
    if not memory:
        return None
    size = cfg.finetune.input_size or NOMINAL_SIZE
    size_text = (f"finetune.input_size = {size}" if cfg.finetune.input_size
                 else f"the backbone's input size (about {size})")
    for key, batch in _batches(cfg):
        need = batch * 3 * size * size * 4 * COPIES
        if need > memory:
            return (f"{key} = {batch} at {size_text} needs at least {_gb(need)} (batch × 3 × "
                    f"{size}² × 4 bytes × {COPIES} copies), more than this machine's {_gb(memory)}; "
                    f"lower {key} or finetune.input_size")
    return None
