"""prune: structural channel pruning of the distilled student, accuracy recovered by distillation,
latency measured rather than inferred from MACs.

Two ways to say how much: `prune.ratio` (share of MACs to remove) or `prune.latency_budget_ms`
(the least pruning whose p50 on `prune.budget_runtime` meets it). Either way the student is
pruned in `prune.steps` steps, each followed by recovery fine-tuning against the teacher, and
the unpruned student and every step's model are timed in one measurement run at the end.
"""
from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.config import Config, Importance
from pipeline.models.loading import load_model
from pipeline.stages.base import Context, Result, Stage
from pipeline.stages.common import data_params, setup_torch

logger = logging.getLogger(__name__)


def params(cfg: Config) -> dict:
    """Prune settings, the distillation loss used for recovery, the data; and in latency-budget
    mode the machine, since the measured latency then decides the output model."""
    out = {**data_params(cfg), "prune": cfg.prune.model_dump(mode="json"), "seed": cfg.run.seed,
           "recovery_loss": {"temperature": cfg.distill.temperature, "alpha": cfg.distill.alpha}}
    if cfg.prune.latency_budget_ms is not None:
        from runtimes.environment import describe_environment, fingerprint
        out["environment"] = fingerprint(describe_environment(threads=cfg.prune.budget_threads))
    return out


def _log(msg: str) -> None:
    logger.info(f"  prune: {msg}")


def _recovery_loss(ctx: Context, pre, splits, device):
    """The distill stage's loss against the finetune teacher; teacher logits come from the shared
    cache when the recovery pixels are fixed (no augmentation)."""
    import torch
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.train.distill_loss import DistillLoss, Renormalize
    from pipeline.train.teacher_cache import TeacherLogitCache, augmentation_on, teacher_logits
    cfg, p = ctx.cfg, ctx.cfg.prune
    upstream = ctx.input("finetune")
    teacher, teacher_pre = load_model(upstream)
    teacher = teacher.to(device, memory_format=torch.channels_last).eval()   # NHWC: faster convolutions
    cached = None
    if not augmentation_on(p.recover.augment):
        logits = teacher_logits(TeacherLogitCache(ctx.store_root), teacher, upstream.outputs["model"].sha256,
                                TorchImageSet(splits.train, teacher_pre, None), splits.train.fingerprint,
                                teacher_pre, device)
        cached = torch.from_numpy(logits)
    return DistillLoss(teacher, cached, Renormalize(pre, teacher_pre, device), cfg.distill.temperature,
                       cfg.distill.alpha, p.recover.label_smoothing)


def run(ctx: Context) -> Result:
    import torch
    from pipeline.data import load_splits
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.models.registry import ModelSpec
    from pipeline.prune.budget import search_budget
    from pipeline.models.pruned import save_pruned_model
    from pipeline.prune.latency import LatencyProbe
    from pipeline.prune.recover import accumulate_gradients
    from pipeline.prune.steps import (StepSetup, accuracy_budget, budget_verdict, compare, prune_step,
                                      within_budget)
    from pipeline.prune.structured import (IterativePruner, PrunePlan, channel_ratio_for, macs_and_params,
                                           protected_layers)
    from pipeline.train.distributed import broadcast, world
    from pipeline.train.loop import correct, evaluate, top1_of
    from pipeline.train.teacher_cache import augmentation_on

    cfg, p = ctx.cfg, ctx.cfg.prune
    started, is_main = time.time(), world().is_main
    device = setup_torch(cfg)
    probe = LatencyProbe.from_config(p)
    probe.check()
    source = ctx.input("distill")
    student, pre = load_model(source)
    spec = ModelSpec.from_dict(source.outputs["model"].metadata["spec"])
    splits = load_splits(cfg.data, cfg.run.seed)
    augment = p.recover.augment if augmentation_on(p.recover.augment) else None
    plan = PrunePlan.from_config(p)
    example = torch.zeros(pre.input_shape(1))
    s = StepSetup(cfg, plan, example, device, train=TorchImageSet(splits.train, pre, augment, cfg.run.seed),
               val=TorchImageSet(splits.val, pre, None, cfg.run.seed),
               calib=TorchImageSet(splits.train, pre, None, cfg.run.seed),
               loss=_recovery_loss(ctx, pre, splits, device),
               protected=protected_layers(student, example, plan))
    s.macs0, s.params0 = macs_and_params(student, example)
    s.right0 = correct(student, s.val, device)
    top1_0 = top1_of(s.right0)
    student.cpu()
    _log(f"student {spec.name}: {s.macs0 / 1e6:.2f} M MACs, {s.params0 / 1e6:.3f} M params, "
         f"val {top1_0:.2f}%; kept whole: {', '.join(s.protected)}")

    if plan.importance in (Importance.taylor, Importance.auto):   # the searches' copies score with these
        accumulate_gradients(student, s.loss, s.train, p.recover.batch_size, device)
        student.cpu()
    work = Path(tempfile.mkdtemp(prefix="edgeship-prune-"))
    criterion = None
    try:
        if plan.importance == Importance.auto:
            from pipeline.prune.criterion_search import search_criterion
            # The first step's share of MACs (latency-budget mode: of half the most it may remove).
            share = (p.ratio if p.latency_budget_ms is None else p.budget_max_ratio / 2) / p.steps
            s.plan, criterion = broadcast(search_criterion(
                student, s, probe, pre, share, work, lambda m: evaluate(m, s.val, device)["top1"], top1_0)
                if is_main else None)
            plan = s.plan
            student.cpu()
        models = {"unpruned": copy.deepcopy(student)}
        budget = None
        if p.latency_budget_ms is not None:
            budget = broadcast(search_budget(student, example, plan, s.protected, pre, probe, p, work,
                                              log=_log) if is_main else None)
            ratio = budget.ratio
        else:
            ratio = p.ratio
        n = p.steps if ratio > 0 else 0
        steps, channel_ratio = [], 0.0
        if n:
            channel_ratio = channel_ratio_for(student, example, int(s.macs0 * (1 - ratio)), plan,
                                              s.protected)
            pruner = IterativePruner(student, example, plan, s.protected, channel_ratio, n)
            _log(f"{ratio:.1%} of MACs to remove: {channel_ratio:.3f} of each layer's channels, in {n} steps")
        kept = 0     # steps whose model holds prune.max_accuracy_drop; the last of them ships
        for i in range(1, n + 1):
            steps.append(prune_step(i, n, ratio, student, pruner, s))
            models[f"step{i}"] = copy.deepcopy(student)
            if not within_budget(steps[-1], top1_0, p.max_accuracy_drop):
                break        # later steps only remove more: stop here, keep the last good model
            kept = i
        student = copy.deepcopy(models[f"step{kept}" if kept else "unpruned"])
        latency = {}
        if is_main:
            sessions = {name: probe.session_for(m, pre, work, name) for name, m in models.items()}
            _log(f"measuring {len(sessions)} models on {probe.label}, {p.measure_rounds} alternating rounds")
            latency = probe.measure_together(sessions, pre, p.measure_rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for step in steps:
        step["latency"] = latency.get(f"step{step['step']}")

    before, after, summary = compare(s, student, steps[:kept], latency, top1_0)
    kept_record = accuracy_budget(steps, kept, n, top1_0, p.max_accuracy_drop)
    metrics = {"mode": "latency_budget" if budget else "ratio", "target_macs_removed": ratio,
               "channel_ratio": round(channel_ratio, 4),
               "importance": plan.importance.value, "global_pruning": plan.global_pruning,
               "round_to": p.round_to, "importance_search": criterion,
               "protected_layers": s.protected, "before": before, "after": after, "summary": summary,
               "accuracy_budget": kept_record, "steps": steps,
               "runtime": {"name": probe.runtime.value, "device": probe.device,
                           "threads": probe.threads, "batch": probe.batch},
               "methodology": probe.describe(p.measure_rounds), "device": str(device),
               "seconds": round(time.time() - started, 2)}
    if budget:
        metrics["budget"] = budget_verdict(budget, after, p.latency_budget_ms, is_main)
    if "speedup_p50" in summary:
        _log(f"{summary['macs_removed']:.1%} of MACs removed, val {top1_0:.2f}% -> "
             f"{after['val_top1']:.2f}%, p50 "
             f"{before['latency']['p50_ms']:.3f} -> {after['latency']['p50_ms']:.3f} ms "
             f"({summary['speedup_p50']:.2f}x) on {probe.label}")
    artifact = save_pruned_model(student, spec, pre, ctx.out_dir,
                                 extra={"student_sha256": source.outputs["model"].sha256,
                                        "macs_removed": summary["macs_removed"]})
    return Result(outputs={"model": artifact}, metrics=metrics)


STAGE = Stage(name="prune", version=4, deps=("finetune", "distill"), params=params, run=run)
