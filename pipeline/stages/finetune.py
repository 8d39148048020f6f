"""finetune: transfer a pretrained backbone to the target classes (the teacher)."""
from __future__ import annotations

import logging

from pipeline.config import Adaptation, Config
from pipeline.models.cost import count_macs, count_params
from pipeline.models.loading import save_model
from pipeline.stages.base import Context, Result, Stage
from pipeline.stages.common import data_params, setup_torch
from pipeline.train.teacher import train_teacher

logger = logging.getLogger(__name__)


def params(cfg: Config) -> dict:
    # allow_partial_weights decides only whether a run may start, never what it computes
    ft = cfg.finetune.model_dump(mode="json", exclude={"allow_partial_weights"})
    out = {**data_params(cfg), "finetune": ft, "seed": cfg.run.seed}
    if cfg.finetune.weights not in ("pretrained", "none"):   # the file's content, not its path
        from pipeline.models.checkpoint import weights_sha256
        out["weights_sha256"] = weights_sha256(cfg.finetune.weights, "finetune.weights")
    if cfg.finetune.adaptation == Adaptation.dann:   # the target's content decides the model too
        from pipeline.train.dann import target_fingerprint
        out["dann_target_fingerprint"] = target_fingerprint(cfg)
    return out


def data_audit(cfg: Config, strategy: dict) -> dict | None:
    """The data audit's record (ImageFolder trees): the scan's findings, the images per class and
    split, what data.exclude left out, and from the probe's frozen features the val images that
    look like one training image and the likely mislabels (None where the probe did not run)."""
    from pipeline.data import load_splits
    from pipeline.train.lookalikes import MARGIN
    splits = load_splits(cfg.data, cfg.run.seed, cfg.run.store)
    if splits.audit is None:
        return None
    probe = strategy.get("probe", {})
    found = probe.get("lookalikes")
    if found:
        shown = ", ".join(f"{p['val']} ~ {p['train']} ({p['margin']:.2f})" for p in found[:3])
        logger.info(
            f"  data: {len(found)} val image(s) look like one training image in the frozen features "
            f"(margin >= {MARGIN:.2f}; the same object or photo session?): {shown}"
            f"{' ...' if len(found) > 3 else ''}; all are in the finetune manifest (data_audit)")
    mislabels = probe.get("mislabels")
    if mislabels and mislabels.get("count"):
        top = mislabels["suspects"]
        shown = ", ".join(f"{s['path']} ({s['label']}, looks {s['predicted']} {s['confidence']:.2f})"
                          for s in top[:3])
        logger.info(
            f"  data: {mislabels['count']} image(s) whose label the frozen features confidently "
            f"disagree with (likely mislabels; confident learning): {shown}"
            f"{' ...' if len(top) > 3 else ''}; the first {len(top)} are in the finetune manifest "
            f"(data_audit); leave wrong ones out with data.exclude")
    return {**splits.audit, "lookalikes": found, "mislabels": mislabels,
            "class_counts": {"train": splits.train.class_counts(), "val": splits.val.class_counts()},
            "excluded": splits.excluded}


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
        from pipeline.train.negative_transfer import scratch_baseline
        metrics["negative_transfer"] = scratch_baseline(cfg, device, result)
    metrics["data_audit"] = data_audit(cfg, transferred.record)
    artifact = save_model(model, spec, pre, ctx.out_dir)
    return Result(outputs={"model": artifact}, metrics=metrics)


STAGE = Stage(name="finetune", version=2, deps=(), params=params, run=run)
