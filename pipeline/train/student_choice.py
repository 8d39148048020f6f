"""`distill.student: auto`: the cheapest student whose frozen features come close to the teacher.

On a few hundred photos, training barely moves a pretrained student past a linear probe of its
own frozen features (flowers5: every distillation schedule measured ended within noise of that
probe), so the probe forecasts what a student can deliver, and costs seconds. Candidates are
probed from the fewest MACs up; the first within `student_within` points of the teacher on val
is the student. If none is, the best-probing one is, with a warning that says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtimes import errors

if TYPE_CHECKING:
    from pipeline.train.probe import ProbeResult

logger = logging.getLogger(__name__)


@dataclass
class StudentChoice:
    name: str
    probe: "ProbeResult"   # the chosen student's probe, reused as its probe_init
    record: dict           # for the manifest and the report


def _candidates(d, classes, teacher_pre):
    """(macs, name, model, preprocessing) per candidate, fewest MACs first."""
    from pipeline.models.cost import count_macs
    from pipeline.models.registry import ModelSpec, build_model, model_preprocessing
    out = []
    for name in dict.fromkeys(d.student_candidates):
        spec = ModelSpec(name, len(classes), d.drop_rate)
        pre = model_preprocessing(spec, classes, teacher_pre.input_size, teacher_pre.crop_pct)
        model = build_model(spec, d.weights)
        out.append((count_macs(model, pre), name, model, pre))
    return sorted(out, key=lambda c: c[0])


def choose_student(d, splits, teacher_pre, teacher_top1: float, teacher_macs: int, device,
                   l2_grid: list[float]) -> StudentChoice:
    """Probe the candidates cheapest first and stop at the first within `d.student_within`."""
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.train.probe import linear_probe
    floor = teacher_top1 - d.student_within - 1e-4    # top-1s are float32: exactly `within` below counts
    record, probes, chosen, reason = [], {}, None, ""
    for macs, name, model, pre in _candidates(d, splits.classes, teacher_pre):
        entry = {"backbone": name, "macs": macs}
        record.append(entry)
        if macs >= teacher_macs:
            entry["left_out"] = (f"{macs / 1e6:.0f} M MACs, not fewer than the teacher's "
                                 f"{teacher_macs / 1e6:.0f} M")
        elif chosen:
            entry["left_out"] = f"not probed: {chosen} costs less and is within"
        else:
            train, val = TorchImageSet(splits.train, pre, None), TorchImageSet(splits.val, pre, None)
            probe = linear_probe(model, train, val, device, l2_grid, f"student candidate {name}")
            entry["probe_val_top1"], probes[name] = probe.val_top1, probe
            if probe.val_top1 >= floor:
                chosen = name
                reason = (f"the fewest MACs whose frozen-feature probe ({probe.val_top1:.2f}%) is within "
                          f"{d.student_within:g} points of the teacher ({teacher_top1:.2f}%)")
    if not probes:
        raise errors.ConfigError(
            f"distill.student_candidates {list(d.student_candidates)}: none has fewer MACs than the "
            f"teacher ({teacher_macs / 1e6:.0f} M); add a smaller backbone, e.g. efficientnet_lite0")
    if chosen is None:
        chosen = max(probes, key=lambda n: probes[n].val_top1)
        reason = (f"no candidate's probe is within {d.student_within:g} points of the teacher "
                  f"({teacher_top1:.2f}%); {chosen} probes best ({probes[chosen].val_top1:.2f}%)")
        logger.warning(f"distill: student auto: {reason}. Add a larger backbone to "
                       "distill.student_candidates or raise distill.student_within")
    logger.info(f"  distill: student auto chose {chosen}: {reason}")
    return StudentChoice(chosen, probes[chosen], {"chosen": chosen, "reason": reason, "candidates": record,
                                                  "within": d.student_within})
