"""Pieces every training stage shares: threads, data at the model's preprocessing, model artifacts."""
from __future__ import annotations

from pathlib import Path

from calibration.preprocess import Preprocessing
from pipeline.artifact import Artifact, Format
from pipeline.config import Augment, Config
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.models.registry import ModelSpec
from pipeline.store import Manifest


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
    """The data part of a training stage's cache key: the spec and the content fingerprint."""
    from pipeline.data import load_splits
    return {"data": cfg.data.model_dump(mode="json"),
            "fingerprint": load_splits(cfg.data, cfg.run.seed).fingerprint}


def datasets(cfg: Config, pre: Preprocessing, augment: Augment | None):
    """(splits, train dataset with augmentation, val dataset) at the model's preprocessing."""
    from pipeline.data import load_splits
    from pipeline.data.torch_dataset import TorchImageSet
    splits = load_splits(cfg.data, cfg.run.seed)
    train = TorchImageSet(splits.train, pre, augment, cfg.run.seed)
    val = TorchImageSet(splits.val, pre, None, cfg.run.seed)
    return splits, train, val


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model, pre: Preprocessing) -> int:
    """Multiply-accumulates of one image at the model's input size (torch-pruning's counter)."""
    import torch
    import torch_pruning as tp
    was_training = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(pre.input_shape(1)))
    model.train(was_training)
    return int(macs)


def save_model(model, spec: ModelSpec, pre: Preprocessing, out_dir: Path, name: str = "model",
               extra: dict | None = None) -> Artifact:
    """Save weights + description and return the torch artifact carrying the preprocessing."""
    meta = {"spec": spec.to_dict(), "preprocessing": pre.to_dict(), **(extra or {})}
    folder = save_checkpoint(model.cpu(), meta, out_dir / name)
    return Artifact.of(out_dir, folder, Format.torch, meta)


def load_model(manifest: Manifest, name: str = "model"):
    """Rebuild a torch model artifact of an upstream stage, in eval mode, with its preprocessing."""
    art = manifest.outputs[name]
    return load_checkpoint(manifest.path_of(name)), art.preprocessing
