"""Layer groups from input to output: what gradual unfreezing and layer-wise lr decay walk over."""
from __future__ import annotations


def layer_groups(model) -> list[list[str]]:
    """Parameter names grouped by depth, the last group being the classifier head."""
    if hasattr(model, "group_matcher"):  # timm models describe their own stages
        from timm.models import group_parameters
        groups = group_parameters(model, model.group_matcher(coarse=True))
        return [list(names) for _, names in sorted(groups.items())]
    groups: list[list[str]] = []
    for child_name, child in model.named_children():  # torchvision: top-level children in order
        names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
        if names:
            groups.append(names)
    return groups


def param_groups(model, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups, lr scaled by layer_decay**depth_from_top; no weight decay on norms and biases."""
    named = dict(model.named_parameters())
    groups = layer_groups(model)
    out = []
    for depth, names in enumerate(reversed(groups)):
        scale = layer_decay ** depth
        decay = [named[n] for n in names if named[n].ndim > 1]
        no_decay = [named[n] for n in names if named[n].ndim <= 1]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                out.append({"params": params, "lr": lr * scale, "weight_decay": wd, "lr_scale": scale})
    return out
