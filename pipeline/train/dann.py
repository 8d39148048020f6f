"""Domain-adversarial adaptation (Ganin et al., 2016): a gradient reversal layer between the backbone's
features and a domain classifier, so the features learn to serve the classes and hide the domain.

The training step sees labelled source batches (from `fit`) and unlabelled target batches (from an
`UnlabelledSet`, which withholds the target's labels). Target labels are read in one place only,
`target_top1`, which scores a trained model on the target's held-out split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from calibration.preprocess import Preprocessing
from pipeline.config import Config, DannConfig, DataKind, DataSpec
from pipeline.data.imageset import DataError, ImageSet


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by -coeff on the way back."""

    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """The gradient reversal layer: `x` unchanged, its gradient scaled by -coeff."""
    return _ReverseGrad.apply(x, float(coeff))


def ramp(progress: float, gamma: float = 10.0, weight: float = 1.0) -> float:
    """Adaptation weight at training progress p in [0, 1]: weight * (2 / (1 + exp(-gamma p)) - 1).

    It starts at 0, so the domain classifier's noisy early signal does not disturb the features
    while they are still learning the classes (Ganin et al., section 5.2.2).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return weight * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


class DomainClassifier(nn.Module):
    """Two hidden ReLU layers and one logit: P(target | features)."""

    def __init__(self, in_features: int, hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


def classifier_of(model: nn.Module) -> nn.Module:
    """The final linear layer whose input is the backbone's pooled feature vector."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"adaptation: dann needs a model ending in a linear classifier; "
                         f"{type(model).__name__} has no nn.Linear (use a timm or torchvision backbone)")
    return linears[-1]


class _FeatureTap:
    """Keeps the input of the classifier from the latest forward pass.

    A hook, not a separate feature call: the model's own forward (DDP-wrapped or not) yields
    both the logits and the features, for any backbone whose head is a linear layer.
    """

    def __init__(self, head: nn.Module):
        self.features = None
        head.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.features = inputs[0]

    def take(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("the classifier head did not run in this forward pass")
        return features.flatten(1)


# ---------------------------------------------------------------- target data
def _is_plain_folder(spec: DataSpec) -> bool:
    return spec.kind == DataKind.imagefolder and not (Path(spec.root).expanduser() / "train").is_dir()


def target_domain(spec: DataSpec, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """(images to adapt to, held-out labelled images to score on or None).

    A dataset with splits gives its train split (labels to be hidden) and its val split; a plain
    folder of images (ImageFolder kind, no train/ inside) gives its images and nothing to score.
    """
    if _is_plain_folder(spec):
        from pipeline.data.imagefolder import load_unlabelled_folder
        return load_unlabelled_folder(spec.root, spec.skip_corrupt, "finetune.dann.target.root"), None
    from pipeline.data import load_splits
    splits = load_splits(spec, seed)
    return splits.train, splits.val


def target_fingerprint(cfg: Config) -> str:
    """Content fingerprint of the target domain, for the finetune cache key."""
    train, held_out = target_domain(cfg.finetune.dann.target, cfg.run.seed)
    return train.fingerprint + ("" if held_out is None else ":" + held_out.fingerprint)


class TargetBatches:
    """Endless seeded batches of unlabelled target images, each rank taking its share."""

    def __init__(self, dataset, batch_size: int, seed: int, num_workers: int = 0):
        from pipeline.train.distributed import ShardedBatchSampler, world
        if len(dataset) == 0:
            raise DataError("the DANN target domain holds no images; set finetune.dann.target to a "
                            "dataset or folder with images")
        self.dataset = dataset
        self.sampler = ShardedBatchSampler(len(dataset), batch_size, seed, world())
        self.loader = torch.utils.data.DataLoader(dataset, batch_sampler=self.sampler,
                                                  num_workers=num_workers)
        self.epoch, self._it = 0, None

    def next(self) -> torch.Tensor:
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self.dataset.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it, self.epoch = None, self.epoch + 1


@dataclass
class DannLoss:
    """The loss hook: source cross-entropy + domain cross-entropy through the reversal layer."""

    tap: _FeatureTap
    domain: nn.Module
    target: TargetBatches
    dann: DannConfig
    label_smoothing: float = 0.0

    def __call__(self, model, x, y, idx, progress):
        xt = self.target.next().to(x.device, non_blocking=True)
        # Source and target go through separate forwards, so batch norm normalises each domain
        # with its own batch statistics; one mixed batch scored 27 points lower on the target
        # of the digits demo (seed 0).
        # Under DDP the source forward uses the wrapper (it arms the gradient all-reduce) and the
        # target forward the inner module: autograd sums both paths' gradients per parameter
        # before DDP's hooks fire, so the all-reduce carries both.
        logits = model(x)
        source = self.tap.take()
        getattr(model, "module", model)(xt)
        target = self.tap.take()
        class_loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        coeff = ramp(progress, self.dann.gamma, self.dann.weight)
        domain_logits = self.domain(reverse_gradient(torch.cat([source, target]), coeff))
        domain_labels = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(domain_logits.device)
        domain_loss = F.binary_cross_entropy_with_logits(domain_logits.float(), domain_labels)
        return class_loss + domain_loss, logits


def dann_loss(model, cfg: Config, pre: Preprocessing, device, target_images: ImageSet | None = None):
    """(loss_fn for `fit`, the domain classifier's parameter groups) for `finetune.adaptation: dann`.

    `target_images` overrides the configured target's training images; whatever they are, only
    their pixels reach training (an `UnlabelledSet` view).
    """
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.train.distributed import world
    ft, seed = cfg.finetune, cfg.run.seed
    if target_images is None:
        target_images, _ = target_domain(ft.dann.target, seed)
    # seed + 1: the target's shuffling and augmentation draws differ from the source's
    unlabelled = TorchImageSet(target_images, pre, ft.train.augment, seed + 1).unlabelled()
    head = classifier_of(model)
    domain = DomainClassifier(head.in_features, ft.dann.hidden).to(device)
    if world().distributed:   # its gradients must be averaged across ranks like the model's
        domain = nn.parallel.DistributedDataParallel(domain)
    batches = TargetBatches(unlabelled, ft.train.batch_size, seed + 1, cfg.run.num_workers)
    loss = DannLoss(_FeatureTap(head), domain, batches, ft.dann, ft.train.label_smoothing)
    params = list(domain.parameters())
    groups = [{"params": [p for p in params if p.ndim > 1], "lr": ft.train.lr,
               "weight_decay": ft.train.weight_decay, "lr_scale": 1.0},
              {"params": [p for p in params if p.ndim <= 1], "lr": ft.train.lr,
               "weight_decay": 0.0, "lr_scale": 1.0}]
    return loss, groups


def target_top1(model, cfg: Config, pre: Preprocessing, device) -> float | None:
    """Top-1 (%) on the target's held-out split: the only reader of target labels. None: unlabelled."""
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.train.loop import evaluate
    _, held_out = target_domain(cfg.finetune.dann.target, cfg.run.seed)
    if held_out is None:
        return None
    if list(held_out.classes) != list(pre.labels):
        raise DataError(f"finetune.dann.target classes {held_out.classes} differ from the source "
                        f"classes {list(pre.labels)}; the target must use the same class names to be scored")
    return evaluate(model, TorchImageSet(held_out, pre, None), device)["top1"]
