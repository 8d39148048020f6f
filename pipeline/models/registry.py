"""Build a classifier from a backbone name: packaged EfficientNet-Lite, any timm or torchvision model.

A `ModelSpec` is everything needed to rebuild the architecture, so a checkpoint (weights only)
plus its spec is a complete, code-free model.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from calibration.preprocess import Preprocessing
from pipeline.models.checkpoint import load_matching
from pipeline.models.packaged import MEAN_STD, PACKAGED, packaged_state_dict
from runtimes import errors

logger = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ModelError(ValueError, errors.ConfigError):
    """A backbone that cannot be built as configured (unknown name, weights not reachable offline)."""


@dataclass(frozen=True)
class ModelSpec:
    """The architecture: backbone name, head size, dropout. Weights live elsewhere."""

    name: str
    num_classes: int
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0      # stochastic depth; like dropout, only active in training

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(d["name"], int(d["num_classes"]), float(d.get("drop_rate", 0.0)),
                   float(d.get("drop_path_rate", 0.0)))


def _family(name: str) -> tuple[str, str]:
    """('packaged'|'timm'|'torchvision', bare name). Prefixes 'timm:' / 'torchvision:' force a family."""
    if name in PACKAGED:
        return "packaged", name
    for prefix in ("timm", "torchvision"):
        if name.startswith(prefix + ":"):
            return prefix, name.split(":", 1)[1]
    import timm
    if timm.is_model(name):
        return "timm", name
    import torchvision
    if name in torchvision.models.list_models():
        return "torchvision", name
    import difflib
    known = list(PACKAGED) + timm.list_models() + torchvision.models.list_models()
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ModelError(f"backbone '{name}' is not a packaged, timm or torchvision model{hint}")


def _create(spec: ModelSpec, pretrained: bool):
    import timm
    family, bare = _family(spec.name)
    if family == "packaged":
        model = timm.create_model(PACKAGED[bare][2], pretrained=False, drop_rate=spec.drop_rate,
                                  drop_path_rate=spec.drop_path_rate)
        if pretrained:
            model.load_state_dict(packaged_state_dict(bare, model.state_dict()), strict=False)
        model.reset_classifier(spec.num_classes)
        return model
    if family == "timm":
        try:
            return timm.create_model(bare, pretrained=pretrained, num_classes=spec.num_classes,
                                     drop_rate=spec.drop_rate, drop_path_rate=spec.drop_path_rate)
        except Exception as e:  # hub download failures surface as many exception types
            raise ModelError(_offline_hint(spec.name, e)) from e
    import torchvision
    try:
        model = torchvision.models.get_model(bare, weights="DEFAULT" if pretrained else None)
    except Exception as e:
        raise ModelError(_offline_hint(spec.name, e)) from e
    _replace_torchvision_head(model, spec.num_classes)
    return model


def _offline_hint(name: str, e: Exception) -> str:
    return (f"could not fetch pretrained weights for '{name}' ({type(e).__name__}: {e}). Without a "
            "network use a packaged backbone (efficientnet_lite0/1/2), weights: none to train from "
            "scratch, or weights: /path/to/checkpoint.safetensors")


def _replace_torchvision_head(model, num_classes: int) -> None:
    import torch.nn as nn
    for attr in ("fc", "classifier", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Linear(head.in_features, num_classes))
            return
        if isinstance(head, nn.Sequential):
            for i in reversed(range(len(head))):
                if isinstance(head[i], nn.Linear):
                    head[i] = nn.Linear(head[i].in_features, num_classes)
                    return
    raise ModelError(f"cannot find the classifier head of torchvision model {type(model).__name__}")


def _head_keys(model) -> set[str]:
    """State-dict names of the classifier head, which a checkpoint for other classes cannot fill."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        head = next((getattr(model, a) for a in ("fc", "classifier", "heads") if hasattr(model, a)), None)
    prefix = next((name for name, m in model.named_modules() if m is head and name), None)
    return {k for k in model.state_dict() if prefix and k.startswith(prefix + ".")}


def build_model(spec: ModelSpec, weights: str = "pretrained", allow_partial: bool = False,
                key: str = "weights"):
    """Create the model; `weights` is 'pretrained', 'none', or a checkpoint path (head may differ).

    From a checkpoint, the tensors that fit are loaded and counted: fewer than half of the
    backbone's (the head aside) means a checkpoint of another architecture, refused with the
    counts unless `allow_partial` (the config option `<section>.allow_partial_weights`)."""
    if weights in ("pretrained", "none"):
        return _create(spec, pretrained=weights == "pretrained")
    model = _create(spec, pretrained=False)
    loaded = load_matching(model, Path(weights), key)
    head = _head_keys(model)
    backbone = set(model.state_dict()) - head
    got = len(loaded & backbone)
    logger.info("%s '%s': loaded %d of %d backbone tensors of %s, %d of %d head tensors",
                key, weights, got, len(backbone), spec.name, len(loaded & head), len(head))
    if 2 * got < len(backbone) and not allow_partial:
        option = f", or set {key.rsplit('.', 1)[0]}.allow_partial_weights: true to train on from " \
                 "random weights where it does not fit" if "." in key else ""
        raise ModelError(f"{key} '{weights}' fills only {got} of {len(backbone)} backbone tensors "
                         f"of {spec.name} (fewer than half; names or shapes differ): point {key} "
                         f"at a checkpoint of {spec.name}{option}")
    if got < len(backbone):
        logger.warning("%s '%s': %d backbone tensors of %s start from random weights",
                       key, weights, len(backbone) - got, spec.name)
    return model


def model_preprocessing(spec: ModelSpec, labels, input_size: int | None = None,
                        crop_pct: float | None = None) -> Preprocessing:
    """The preprocessing the backbone was trained with, at an optional input size."""
    family, bare = _family(spec.name)
    if family == "packaged":
        size, mean, std, interp, crop = PACKAGED[bare][3], MEAN_STD, MEAN_STD, "bicubic", 0.875
    elif family == "timm":
        import timm
        cfg = timm.get_pretrained_cfg(bare)
        cfg = cfg.to_dict() if cfg is not None else {}
        size = cfg.get("input_size", (3, 224, 224))[-1]
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        interp, crop = cfg.get("interpolation", "bicubic"), cfg.get("crop_pct", 0.875)
    else:
        size, mean, std, interp, crop = 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.875
    return Preprocessing(input_size=input_size or size, mean=tuple(mean), std=tuple(std),
                         interpolation=interp if interp in ("nearest", "bilinear", "bicubic") else "bilinear",
                         crop_pct=crop if crop_pct is None else crop_pct, labels=tuple(labels))
