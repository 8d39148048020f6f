"""Pruned checkpoints as data: safetensors weights + the changed layer widths as JSON.

torch-pruning's own `tp.state_dict` pickles every module's `__dict__` (modules, hooks, code), so
it cannot be read back with `torch.load(weights_only=True)`. A pruned model differs from the
architecture its spec builds only in tensor shapes and in a few integer attributes
(`out_channels`, `groups`, `num_features`, `in_features`, ...). We save exactly that: the weights
(their shapes are in the safetensors header) and, in `pruned.json`, the attributes that differ
from a freshly built model. `restore_pruned` applies both to a fresh model, and
`pipeline.models.loading.load_checkpoint` calls it when model.json says "pruned": true. The
format lives with the other checkpoint code, so loading a model never needs the pruning package.
"""
from __future__ import annotations

import json
from pathlib import Path

STRUCTURE = "pruned.json"
FORMAT = "edgeship.pruned-structure/1"
_SKIP = {"training"}


def _plain(value) -> bool:
    """Integer-like layer attributes (widths, groups, shapes) that pruning may change."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                   for v in value)


def pruned_structure(model, reference) -> dict:
    """The integer attributes of `model`'s layers that differ from `reference` (same architecture,
    unpruned), as {"format", "modules": {layer name: {attribute: value}}}."""
    ref = dict(reference.named_modules())
    modules = {}
    for name, module in model.named_modules():
        if name not in ref:
            raise ValueError(f"pruned model has layer '{name}' that its spec does not build; pruning "
                             "must change widths only, not add or rename layers")
        changed = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(module).items()
                   if not k.startswith("_") and k not in _SKIP and _plain(v)
                   and vars(ref[name]).get(k) != v}
        if changed:
            modules[name] = changed
    return {"format": FORMAT, "modules": modules}


def save_pruned_model(model, spec, pre, out_dir: Path, name: str = "model", extra: dict | None = None):
    """Save a pruned model like `pipeline.models.loading.save_model`, plus its structure file.

    model.json carries "pruned": true, so `load_checkpoint` (and with it every later stage's
    `load_model(manifest)`) rebuilds the pruned architecture before loading the weights.
    """
    from pipeline.artifact import Artifact, Format
    from pipeline.models.checkpoint import save_checkpoint
    from pipeline.models.registry import build_model
    meta = {"spec": spec.to_dict(), "preprocessing": pre.to_dict(), "pruned": True, **(extra or {})}
    reference = build_model(spec, weights="none")
    structure = pruned_structure(model.cpu(), reference)
    folder = save_checkpoint(model.cpu(), meta, Path(out_dir) / name)
    (folder / STRUCTURE).write_text(json.dumps(structure, indent=1, sort_keys=True))
    return Artifact.of(Path(out_dir), folder, Format.torch, meta)


def restore_pruned(model, ckpt_dir: Path) -> None:
    """Give a freshly built `model` the pruned widths saved in `ckpt_dir`, ready for its weights.

    Sets the recorded attributes, then replaces every parameter and buffer whose saved shape
    differs with an empty tensor of the saved shape; `load_state_dict` then fills them.
    """
    import torch
    from safetensors import safe_open
    from pipeline.models.checkpoint import WEIGHTS
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / STRUCTURE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir} is marked pruned but has no {STRUCTURE}; re-run the "
                                "prune stage (edgeship run prune --force prune)")
    structure = json.loads(path.read_text())
    if structure.get("format") != FORMAT:
        raise ValueError(f"{path} has format {structure.get('format')!r}; this edgeship reads {FORMAT!r}")
    named = dict(model.named_modules())
    for name, attrs in structure["modules"].items():
        if name not in named:
            raise ValueError(f"{path} changes layer '{name}', which {type(model).__name__} does not have")
        for key, value in attrs.items():
            old = getattr(named[name], key, None)
            setattr(named[name], key, tuple(value) if isinstance(old, tuple) else value)
    with safe_open(str(ckpt_dir / WEIGHTS), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for key, shape in shapes.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = named.get(owner_name)
        if owner is None:
            continue                      # load_state_dict reports unexpected keys
        if leaf in owner._parameters and owner._parameters[leaf] is not None:
            old = owner._parameters[leaf]
            if tuple(old.shape) != shape:
                owner._parameters[leaf] = torch.nn.Parameter(
                    torch.empty(shape, dtype=old.dtype), requires_grad=old.requires_grad)
        elif leaf in owner._buffers and owner._buffers[leaf] is not None:
            old = owner._buffers[leaf]
            if tuple(old.shape) != shape:
                owner._buffers[leaf] = torch.empty(shape, dtype=old.dtype)
