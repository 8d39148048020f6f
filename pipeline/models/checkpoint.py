"""Checkpoints are data: safetensors weights + a JSON model description, never pickled code."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

from runtimes import errors

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


class CheckpointError(ValueError, errors.ConfigError):
    """A weights file that does not exist or is not a safetensors file / torch state dict."""


EXPECTED = ("a .safetensors file (safetensors.torch.save_file) or a torch state dict "
            "(torch.save(model.state_dict(), path))")


def weights_sha256(path: str | Path, key: str = "weights") -> str:
    """The content hash of a weights checkpoint given in the config as `key` (for cache keys:
    a new file at the same path is a new model)."""
    from calibration.hashing import sha256_file
    path = _weights_file(Path(path), key)
    return sha256_file(path)


def _weights_file(path: Path, key: str) -> Path:
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{key} '{path}' does not exist; give pretrained, none, or the path "
                              f"of {EXPECTED}")
    return path


def _reason(e: BaseException) -> str:
    text = str(e)
    if "Weights only load failed" in text:      # torch's own message runs to a page
        return "it pickles objects, not only tensors, and checkpoints load as data, never code"
    if isinstance(e, (KeyError, EOFError, pickle.UnpicklingError)) or "load key" in text:
        return "torch.save did not write it (truncated, or another format)"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:120]


def read_state_dict(path: str | Path, key: str = "checkpoint") -> dict:
    """The tensors of a .safetensors file or a torch state dict (loaded weights_only: data, never
    code); CheckpointError naming the file and what it should be when it is neither."""
    import torch
    path = _weights_file(Path(path), key)
    readers = [_read_safetensors, _read_torch]
    if path.suffix != ".safetensors":
        readers.reverse()
    reason = None
    for reader in readers:   # the suffix picks the first try; a misnamed file still loads
        try:
            state = reader(path)
        except Exception as e:   # each format fails in its own way: SafetensorError, pickle, zip
            reason = reason or f"{reader.__doc__}: {_reason(e)}"
            continue
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return state
        what = "no tensors" if state == {} else f"a {type(state).__name__}, not named tensors"
        reason = reason or f"{reader.__doc__}: it holds {what}"
    raise CheckpointError(f"{key} '{path}' is not a checkpoint ({reason}); expected {EXPECTED}")


def _read_safetensors(path: Path):
    """read as safetensors"""
    from safetensors.torch import load_file
    return load_file(str(path))


def _read_torch(path: Path):
    """read as a torch file"""
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(model, path: Path) -> None:
    """Load every tensor of a checkpoint (.safetensors, or a torch file, weights_only) into model."""
    model.load_state_dict(read_state_dict(path))


def load_matching(model, path: Path, key: str = "weights") -> set[str]:
    """Load the tensors of a checkpoint whose name and shape fit `model` (a new head for new
    classes does not); returns the names loaded, for the caller to judge the share."""
    own = model.state_dict()
    state = {k: v for k, v in read_state_dict(path, key).items()
             if k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=False)
    return set(state)
