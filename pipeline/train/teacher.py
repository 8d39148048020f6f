"""Fine-tune the configured backbone into the teacher: shared by the finetune stage, its
negative-transfer baseline and the domain-adaptation experiment."""
from __future__ import annotations

from calibration.preprocess import Preprocessing
from pipeline.config import Adaptation, Augment, Config


def _datasets(cfg: Config, pre: Preprocessing, augment: Augment | None):
    """(splits, train dataset with augmentation, val dataset) at the model's preprocessing."""
    from pipeline.data import load_splits
    from pipeline.data.torch_dataset import TorchImageSet
    splits = load_splits(cfg.data, cfg.run.seed)
    train = TorchImageSet(splits.train, pre, augment, cfg.run.seed)
    val = TorchImageSet(splits.val, pre, None, cfg.run.seed)
    return splits, train, val


def train_teacher(cfg: Config, device, weights: str, desc: str, max_seconds: float | None = None):
    """Build and fine-tune the configured backbone; returns (model, spec, preprocessing, TransferResult)."""
    import torch
    from pipeline.data import load_splits
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.models.layers import param_groups
    from pipeline.models.registry import ModelSpec, build_model, model_preprocessing
    from pipeline.train.freezing import Freezer
    from pipeline.train.loop import fit
    from pipeline.train.transfer import transfer

    ft = cfg.finetune
    splits = load_splits(cfg.data, cfg.run.seed)
    spec = ModelSpec(ft.backbone, len(splits.classes), ft.drop_rate, ft.drop_path_rate)
    torch.manual_seed(cfg.run.seed)      # the new head's initialisation is part of the run's seed
    model = build_model(spec, weights, ft.allow_partial_weights, "finetune.weights")
    pre = model_preprocessing(spec, splits.classes, ft.input_size, ft.crop_pct)
    _, train_set, val_set = _datasets(cfg, pre, ft.train.augment)
    probe_sets = (TorchImageSet(splits.train, pre, None, cfg.run.seed), val_set)

    def train_fn(strategy, start_is_candidate: bool):
        freezer = Freezer(model, strategy, ft.unfreeze_every)
        groups = param_groups(model, ft.train.lr, ft.train.weight_decay, ft.layer_decay)
        loss_fn = None
        if ft.adaptation == Adaptation.dann:
            from pipeline.train.dann import dann_loss
            loss_fn, extra = dann_loss(model, cfg, pre, device)
            groups = groups + extra
        return fit(model, train_set, val_set, ft.train, device, cfg.run.seed, groups, loss_fn=loss_fn,
                   on_epoch_start=freezer.apply, desc=desc, num_workers=cfg.run.num_workers,
                   start_is_candidate=start_is_candidate, max_seconds=max_seconds)

    result = transfer(model, probe_sets, ft, device, train_fn, min(splits.train.class_counts().values()))
    return model, spec, pre, result

