"""Pieces the training stages share: threads and device, and the data part of a cache key.

Model artifacts (save, load, size) live in pipeline.models; training code in pipeline.train.
"""
from __future__ import annotations

from pipeline.config import Config

def setup_torch(cfg: Config):
    """Threads and device for a training stage."""
    import torch
    from pipeline.train.distributed import init
    from pipeline.train.loop import resolve_device
    torch.set_num_threads(cfg.run.thread_count())
    device = resolve_device(cfg.run.device.value)
    init(device.type)
    return device


def data_params(cfg: Config) -> dict:
    """The data part of a training stage's cache key: the spec and the content fingerprint.

    data.root is left out: the fingerprint covers every image's path under the root and its
    bytes, so a tree moved elsewhere with the same content keeps its cached stages. The audit's
    switches are left out too: they decide whether a run may start, never what it computes.
    data.exclude counts as the images it leaves out (their paths, sorted), not as written: a list
    file moved elsewhere keeps the key, an edited one changes it; left empty it is not in the key
    at all, so keys from before the setting existed still match."""
    from pipeline.data import load_splits
    splits = load_splits(cfg.data, cfg.run.seed, cfg.run.store)
    spec = cfg.data.model_dump(mode="json")
    for key in ("root", "allow_leakage", "allow_conflicting_labels", "near_duplicate_bits", "exclude"):
        spec.pop(key, None)
    if splits.excluded:
        spec["exclude"] = splits.excluded
    return {"data": spec, "fingerprint": splits.fingerprint}
