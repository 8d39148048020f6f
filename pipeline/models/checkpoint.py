"""Checkpoints are data: safetensors weights + a JSON model description, never pickled code."""
from __future__ import annotations

import json
import os
from pathlib import Path

WEIGHTS, DESCRIPTION = "model.safetensors", "model.json"


def save_checkpoint(model, description: dict, out_dir: Path) -> Path:
    """Write model.safetensors and model.json (spec, preprocessing, ...) into out_dir."""
    from safetensors.torch import save_file
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out_dir / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out_dir / WEIGHTS)
    (out_dir / DESCRIPTION).write_text(json.dumps(description, indent=2))
    return out_dir


def read_description(ckpt_dir: Path) -> dict:
    return json.loads((Path(ckpt_dir) / DESCRIPTION).read_text())


def load_weights(model, path: Path, skip_mismatched: bool = False) -> None:
    """Load a state dict from .safetensors (or a torch file, weights_only) into model."""
    import torch
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if skip_mismatched:  # a new head for new classes: keep only tensors that fit
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=not skip_mismatched)

