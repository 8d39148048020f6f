"""Structural channel pruning with torch-pruning's dependency graph, sized by MACs.

torch-pruning's `pruning_ratio` is a share of *channels*; what users ask for is a share of
*MACs*. `channel_ratio_for` finds, by bisection on copies of the model, the smallest channel
ratio whose pruned model fits a MAC target; `prune_to_macs` applies it in one shot and
`IterativePruner` in several steps (with recovery training between them). The classifier and
the layers the user names are never pruned: neither their outputs nor their inputs change.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from pipeline.config import Importance, Prune
from runtimes import errors

_MAX_CHANNEL_RATIO = 0.95   # never search past removing 95 % of a layer's channels
_BISECTIONS = 10            # 2**-10 of the channel-ratio range: finer than any round_to step


class PruneError(ValueError, errors.StageFailed):
    """A pruning request that cannot be met (unknown layer, unreachable MAC target, ...)."""


@dataclass(frozen=True)
class PrunePlan:
    """How to prune, from `cfg.prune`: importance, scope, rounding, protected and overridden layers."""

    importance: Importance = Importance.l2
    global_pruning: bool = False
    round_to: int = 8
    ignored_layers: tuple[str, ...] = ()
    layer_ratios: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, p: Prune) -> "PrunePlan":
        return cls(p.importance, p.global_pruning, p.round_to, tuple(p.ignored_layers),
                   dict(p.layer_ratios))


def importance_of(kind: Importance):
    """The torch-pruning importance criterion for a config value."""
    if kind == Importance.l1:
        return tp.importance.MagnitudeImportance(p=1)
    if kind == Importance.l2:
        return tp.importance.MagnitudeImportance(p=2)
    if kind == Importance.bn_scale:
        return tp.importance.BNScaleImportance()
    if kind == Importance.taylor:
        return tp.importance.TaylorImportance()
    raise PruneError(f"prune.importance {kind!r} is not one of {[k.value for k in Importance]}")


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass on `example`, counted by torch-pruning."""
    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    model.train(was_training)
    return int(macs), int(params)


def classifier_name(model: nn.Module) -> str:
    """Name of the classification head: timm's `get_classifier()`, else the last Linear layer."""
    named = list(model.named_modules())
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        for name, module in named:
            if module is head and name:
                return name
    linears = [name for name, module in named if isinstance(module, nn.Linear)]
    if not linears:
        raise PruneError(f"cannot find the classifier of {type(model).__name__} (no nn.Linear); "
                         "name it in prune.ignored_layers")
    return linears[-1]


def _resolve(model: nn.Module, names, what: str) -> dict[str, nn.Module]:
    named = dict(model.named_modules())
    out = {}
    for name in names:
        if name not in named:
            close = difflib.get_close_matches(name, [n for n in named if n], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise PruneError(f"{what} names layer '{name}', which {type(model).__name__} does not "
                             f"have{hint}; use a name from model.named_modules()")
        out[name] = named[name]
    return out


def protected_layers(model: nn.Module, example: torch.Tensor, plan: PrunePlan) -> list[str]:
    """Names of the layers pruning must leave alone: the classifier and `plan.ignored_layers`,
    plus the layers producing their inputs (so their input channels stay too)."""
    keep = _resolve(model, [classifier_name(model), *plan.ignored_layers], "prune.ignored_layers")
    with _eval(model):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    names = {m: n for n, m in model.named_modules()}
    out = set(keep)
    for module in keep.values():
        pruner = graph.get_pruner_of_module(module)
        channels = pruner.get_in_channels(module) if pruner is not None else None
        if not channels:
            continue
        group = graph.get_pruning_group(module, pruner.prune_in_channels, list(range(channels)))
        out.update(names[dep.target.module] for dep, _ in group
                   if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names)
    return sorted(out)


def out_channels(module: nn.Module) -> int | None:
    """Output width of a conv, linear or norm layer (None for other modules)."""
    for attr in ("out_channels", "out_features", "num_features"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return None


class _Pruner(tp.pruner.BasePruner):
    """torch-pruning's pruner, except that rounding to `round_to` never leaves a layer empty
    (the stock rounding floors, so a 12-channel layer asked to keep 5 would keep 0)."""

    def _round_to(self, n_pruned, current_channels, round_to):
        keep = current_channels - n_pruned
        keep = max(keep - keep % round_to, min(round_to, current_channels))
        return max(current_channels - keep, 0)


def _pruner(model, example, plan: PrunePlan, channel_ratio: float, protected: list[str],
            overrides: dict[str, float], steps: int = 1) -> _Pruner:
    named = dict(model.named_modules())
    # Fresh dicts: BasePruner's defaults for these are shared mutable objects that would keep
    # every copy the search prunes alive.
    return _Pruner(model, example, importance=importance_of(plan.importance),
                   global_pruning=plan.global_pruning, pruning_ratio=channel_ratio,
                   pruning_ratio_dict={named[n]: r for n, r in overrides.items()},
                   ignored_layers=[named[n] for n in protected], iterative_steps=steps,
                   round_to=plan.round_to if plan.round_to > 1 else None,
                   in_channel_groups={}, out_channel_groups={}, num_heads={}, channel_groups={})


def _overrides(model: nn.Module, plan: PrunePlan) -> dict[str, float]:
    layers = _resolve(model, plan.layer_ratios, "prune.layer_ratios")
    for name, module in layers.items():
        if out_channels(module) is None:
            raise PruneError(f"prune.layer_ratios names '{name}' ({type(module).__name__}), which has "
                             "no output channels; name a conv or linear layer")
    return dict(plan.layer_ratios)


def _apply(model, example, plan, ratio, protected, overrides) -> None:
    with _eval(model):
        _pruner(model, example, plan, ratio, protected, overrides).step()


def channel_ratio_for(model: nn.Module, example: torch.Tensor, target_macs: int, plan: PrunePlan,
                      protected: list[str], overrides: dict[str, float] | None = None) -> float:
    """The smallest channel ratio whose one-shot pruning of `model` leaves at most `target_macs`.

    Bisects on deep copies (each pruned and counted); `model` itself is untouched. Raises
    PruneError when even removing 95 % of the prunable channels does not reach the target.
    """
    overrides = _overrides(model, plan) if overrides is None else overrides

    def macs_at(ratio: float) -> int:
        clone = copy.deepcopy(model)
        for src, dst in zip(model.parameters(), clone.parameters()):   # taylor scores need the grads
            dst.grad = None if src.grad is None else src.grad.clone()
        _apply(clone, example, plan, ratio, protected, overrides)
        return macs_and_params(clone, example)[0]

    if macs_at(0.0) <= target_macs:
        return 0.0
    lo, hi = 0.0, _MAX_CHANNEL_RATIO
    reached = macs_at(hi)
    if reached > target_macs:
        raise PruneError(
            f"cannot prune {type(model).__name__} to {target_macs:,} MACs: removing "
            f"{_MAX_CHANNEL_RATIO:.0%} of every prunable layer's channels leaves {reached:,} "
            f"(the classifier, prune.ignored_layers {list(plan.ignored_layers)} and the layers "
            "feeding them are kept whole); lower prune.ratio or protect fewer layers")
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        if macs_at(mid) <= target_macs:
            hi = mid
        else:
            lo = mid
    return hi


def prune_to_macs(model: nn.Module, example: torch.Tensor, target_macs: int, plan: PrunePlan,
                  protected: list[str], overrides: dict[str, float] | None = None) -> float:
    """Prune `model` in place, one shot, to at most `target_macs`, removing as few channels as
    it can; `plan.layer_ratios` (or `overrides`) fix some layers' ratios. Returns the channel ratio."""
    overrides = _overrides(model, plan) if overrides is None else overrides
    ratio = channel_ratio_for(model, example, target_macs, plan, protected, overrides)
    if ratio > 0 or any(r > 0 for r in overrides.values()):
        _apply(model, example, plan, ratio, protected, overrides)
    return ratio


class IterativePruner:
    """torch-pruning's iterative schedule: after `steps` calls of `step()`, every prunable layer
    has lost `channel_ratio` of its *original* width (layer_ratios: their own share), rounded
    to `round_to`. The widths after the last step equal one-shot pruning at `channel_ratio`,
    while importance is re-scored on the recovered weights before each step."""

    def __init__(self, model: nn.Module, example: torch.Tensor, plan: PrunePlan, protected: list[str],
                 channel_ratio: float, steps: int):
        self.model = model
        with _eval(model):
            self._pruner = _pruner(model, example, plan, channel_ratio, protected,
                                   _overrides(model, plan), steps)

    def step(self) -> None:
        with _eval(self.model):
            self._pruner.step()


class _eval:
    """Trace and prune in eval mode (a traced forward in train mode would move BN statistics)."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)
