"""Torch models as stage artifacts: save one with its preprocessing, rebuild one (pruned too)."""
from __future__ import annotations

from pathlib import Path

from calibration.preprocess import Preprocessing
from pipeline.artifact import Artifact, Format
from pipeline.models.checkpoint import (WEIGHTS, CheckpointError, load_weights, read_description,
                                       save_checkpoint)
from pipeline.models.registry import ModelSpec, build_model
from pipeline.store import Manifest
from runtimes import errors


class DamagedCheckpoint(RuntimeError, errors.StoreError):
    """A checkpoint inside the store that no longer reads as one."""


def load_checkpoint(ckpt_dir: Path):
    """Rebuild a model from a checkpoint folder written by save_checkpoint (pruned ones too)."""
    desc = read_description(ckpt_dir)
    model = build_model(ModelSpec.from_dict(desc["spec"]), weights="none")
    if desc.get("pruned"):  # narrower layers than the spec builds: see pipeline.models.pruned
        from pipeline.models.pruned import restore_pruned
        restore_pruned(model, Path(ckpt_dir))
    try:
        load_weights(model, Path(ckpt_dir) / WEIGHTS)
    except CheckpointError as e:
        raise DamagedCheckpoint(f"{e}: the store's copy is damaged; delete {ckpt_dir} or re-run "
                                "that stage with --force") from None
    return model.eval()


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
