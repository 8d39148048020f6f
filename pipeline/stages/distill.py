"""distill: teach a smaller student backbone from the fine-tuned teacher (Hinton soft targets + labels).

The same run also trains the student alone with the same budget and seed, so the manifest says
what distillation bought, next to the teacher's accuracy and both models' size and MACs.
`distill.student: auto` first picks the student from frozen-feature probes (train/student_choice.py).
"""
from __future__ import annotations

import logging

from pipeline.config import Config
from pipeline.measure.accuracy_interval import describe, paired_difference
from pipeline.models.cost import count_macs, count_params
from pipeline.models.loading import load_model, save_model
from pipeline.stages.base import Context, Result, Stage
from pipeline.stages.common import data_params, setup_torch
from pipeline.train.distill_loss import DistillLoss, Renormalize
from pipeline.train.teacher_cache import augmentation_on

logger = logging.getLogger(__name__)


def params(cfg: Config) -> dict:
    # Files are keyed by their content, not their paths: a moved folder or a replaced checkpoint
    # at the same path is what the key must tell apart.
    d = cfg.distill
    out = {**data_params(cfg), "distill": d.model_dump(mode="json", exclude={"unlabelled_root"}),
           "seed": cfg.run.seed}
    if d.unlabelled_root:      # the extra images' content decides the student too
        from pipeline.data.imagefolder import load_unlabelled_folder
        out["unlabelled_fingerprint"] = load_unlabelled_folder(d.unlabelled_root,
                                                               cfg.data.skip_corrupt).fingerprint
    if d.weights not in ("pretrained", "none"):
        from pipeline.models.checkpoint import weights_sha256
        out["weights_sha256"] = weights_sha256(d.weights, "distill.weights")
    return out


def _train_student(cfg: Config, spec, train_set, val_set, device, loss_fn, desc: str, probe=None):
    """Build the pretrained student and train it; with `probe` (a ProbeResult of its frozen
    features) it starts from that fitted head (LP-FT), which it must beat on val."""
    import torch
    from pipeline.models.layers import param_groups
    from pipeline.models.registry import build_model
    from pipeline.train.loop import fit
    from pipeline.train.probe import load_head
    d = cfg.distill
    torch.manual_seed(cfg.run.seed)      # both students start from the same head initialisation
    model = build_model(spec, d.weights)
    if probe is not None:
        load_head(model, probe)
    groups = param_groups(model, d.train.lr, d.train.weight_decay, 1.0)
    result = fit(model, train_set, val_set, d.train, device, cfg.run.seed, groups, loss_fn=loss_fn,
                 desc=desc, num_workers=cfg.run.num_workers, start_is_candidate=probe is not None)
    return model, result


def _probe_student(cfg: Config, spec, splits, pre, val_set, device):
    """A linear probe of the pretrained student's frozen features (student auto has one already)."""
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.models.registry import build_model
    from pipeline.train.probe import linear_probe
    train = TorchImageSet(splits.train, pre, None, cfg.run.seed)
    return linear_probe(build_model(spec, cfg.distill.weights), train, val_set, device,
                        cfg.finetune.probe_l2, "student")


def run(ctx: Context) -> Result:
    import torch
    from pipeline.data import DataError, load_splits
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.models.registry import ModelSpec, model_preprocessing
    from pipeline.train.loop import correct, top1_of
    from pipeline.train.teacher_cache import TeacherLogitCache, teacher_logits

    cfg, d = ctx.cfg, ctx.cfg.distill
    device = setup_torch(cfg)
    upstream = ctx.input("finetune")
    teacher, teacher_pre = load_model(upstream)
    teacher_macs = count_macs(teacher, teacher_pre)
    teacher = teacher.to(device, memory_format=torch.channels_last).eval()   # NHWC: faster on CPU and GPU
    splits = load_splits(cfg.data, cfg.run.seed)
    if list(teacher_pre.labels) != list(splits.classes):
        raise DataError(f"the finetune teacher predicts {list(teacher_pre.labels)} but the data has "
                        f"classes {splits.classes}; re-run finetune on this data (make finetune)")
    teacher_right = correct(teacher, TorchImageSet(splits.val, teacher_pre, None), device)
    choice, student_name = None, d.student
    if d.student == "auto":
        from pipeline.train.student_choice import choose_student
        choice = choose_student(d, splits, teacher_pre, top1_of(teacher_right), teacher_macs, device,
                                cfg.finetune.probe_l2)
        student_name = choice.name
    spec = ModelSpec(student_name, len(splits.classes), d.drop_rate)
    pre = model_preprocessing(spec, splits.classes, teacher_pre.input_size, teacher_pre.crop_pct)
    augmented = augmentation_on(d.train.augment)
    train_set = TorchImageSet(splits.train, pre, d.train.augment if augmented else None, cfg.run.seed)
    val_set = TorchImageSet(splits.val, pre, None, cfg.run.seed)

    cache = TeacherLogitCache(ctx.store_root)
    cached = None
    if not augmented:   # fixed pixels per sample: one teacher pass, reused every epoch and run
        logits = teacher_logits(cache, teacher, upstream.outputs["model"].sha256,
                                TorchImageSet(splits.train, teacher_pre, None), splits.train.fingerprint,
                                teacher_pre, device)
        cached = torch.from_numpy(logits)
    unlabelled, extra_images = None, 0
    if d.unlabelled_root:
        from pipeline.data.imagefolder import load_unlabelled_folder
        from pipeline.data.torch_dataset import endless_batches
        extra = load_unlabelled_folder(d.unlabelled_root, cfg.data.skip_corrupt)
        extra_images = len(extra)
        views = TorchImageSet(extra, pre, d.train.augment if augmented else None, cfg.run.seed)
        unlabelled = endless_batches(views.unlabelled(), d.train.batch_size, cfg.run.seed)
    loss = DistillLoss(teacher, cached, Renormalize(pre, teacher_pre, device), d.temperature, d.alpha,
                       d.train.label_smoothing, unlabelled)

    probe = None
    if d.probe_init:     # one probe of the pretrained student's features serves both students
        probe = choice.probe if choice else _probe_student(cfg, spec, splits, pre, val_set, device)
    alone = None
    if d.compare_alone:
        alone_model, alone = _train_student(cfg, spec, train_set, val_set, device, None,
                                            "student alone", probe)
        alone_right = correct(alone_model, val_set, device)
        del alone_model
    student, result = _train_student(cfg, spec, train_set, val_set, device, loss, "distill", probe)
    student_right = correct(student, val_set, device)
    # image by image, since a few hundred val images resolve a couple of points at best
    gain = paired_difference(student_right, alone_right) if alone else None
    gap = paired_difference(student_right, teacher_right)
    logger.info("  distill: distilled vs alone "
                + (describe(gain, "distilled", "alone") if gain else "not compared")
                + f"; vs the teacher {describe(gap, 'distilled', 'the teacher')}")
    metrics = {"val_top1": result.best_top1, "best_epoch": result.best_epoch,
               "teacher_top1": top1_of(teacher_right),
               "student_alone_top1": alone.best_top1 if alone else None,
               "distill_gain_points": round(result.best_top1 - alone.best_top1, 4) if alone else None,
               "distill_gain": gain, "teacher_gap": gap,
               "student": {"backbone": student_name, "params": count_params(student),
                           "macs": count_macs(student.cpu(), pre)},
               "student_choice": choice.record if choice else None,
               "teacher": {"backbone": upstream.outputs["model"].metadata["spec"]["name"],
                           "params": count_params(teacher), "macs": teacher_macs},
               "history": {"distilled": result.history, "alone": alone.history if alone else None},
               "train_seconds": {"distilled": round(result.seconds, 2),
                                 "alone": round(alone.seconds, 2) if alone else None},
               "augmentation": augmented, "teacher_batches_run": loss.teacher_batches,
               "unlabelled_images": extra_images,
               "teacher_logit_cache": {"used": cached is not None, "hits": cache.hits,
                                       "misses": cache.misses},
               "device": str(device)}
    if alone and result.best_top1 < alone.best_top1:
        logger.warning(f"the distilled student ({result.best_top1:.2f}%) is below the student trained "
                       f"alone ({alone.best_top1:.2f}%; {describe(gain, 'distilled', 'alone')}); try a "
                       "higher distill.temperature or lower distill.alpha")
    artifact = save_model(student, spec, pre, ctx.out_dir,
                          extra={"teacher_sha256": upstream.outputs["model"].sha256})
    return Result(outputs={"model": artifact}, metrics=metrics)


STAGE = Stage(name="distill", version=2, deps=("finetune",), params=params, run=run)
