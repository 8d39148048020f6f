"""finetune: transfer a pretrained backbone to the target classes (the teacher)."""
from __future__ import annotations

from pipeline.config import Adaptation, Config
from pipeline.stages.base import Context, Result, Stage
from pipeline.stages.common import (count_macs, count_params, data_params, datasets, save_model,
                                    setup_torch)


def params(cfg: Config) -> dict:
    out = {**data_params(cfg), "finetune": cfg.finetune.model_dump(mode="json"), "seed": cfg.run.seed}
    if cfg.finetune.adaptation == Adaptation.dann:   # the target's content decides the model too
        from pipeline.train.dann import target_fingerprint
        out["dann_target_fingerprint"] = target_fingerprint(cfg)
    return out


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
    model = build_model(spec, weights)
    pre = model_preprocessing(spec, splits.classes, ft.input_size, ft.crop_pct)
    _, train_set, val_set = datasets(cfg, pre, ft.train.augment)
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


def run(ctx: Context) -> Result:
    cfg = ctx.cfg
    device = setup_torch(cfg)
    model, spec, pre, transferred = train_teacher(cfg, device, cfg.finetune.weights, "finetune")
    result = transferred.fit
    extra = {}
    if cfg.finetune.adaptation == Adaptation.dann:   # scored before count_macs moves the model to cpu
        from pipeline.train.dann import target_top1
        extra["target_top1"] = target_top1(model, cfg, pre, device)
    metrics = {"val_top1": result.best_top1, "best_epoch": result.best_epoch,
               "history": result.history, "train_seconds": round(result.seconds, 2),
               "params": count_params(model), "macs": count_macs(model.cpu(), pre),
               "strategy": transferred.record, "device": str(device), **extra}
    if cfg.finetune.negative_transfer_check:
        from pipeline.stages.negative_transfer import scratch_baseline
        metrics["negative_transfer"] = scratch_baseline(cfg, device, result)
    artifact = save_model(model, spec, pre, ctx.out_dir)
    return Result(outputs={"model": artifact}, metrics=metrics)


STAGE = Stage(name="finetune", version=2, deps=(), params=params, run=run,
              help="fine-tune a pretrained backbone on the dataset (the teacher)")
