"""Comparing an artifact's logits with a reference's, with one tolerance per precision.

The rules live here, in runtimes/, because a device checks its bundle with them and carries only
runtimes/; exporters/parity.py (export checks) and runtimes/bundle_check.py use this one copy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from runtimes import errors
from runtimes.precision import Precision

# fp32 is held to an absolute bound; fp16 to a bound relative to the logits' scale (half precision
# keeps ~3 significant digits, so the error grows with magnitude); int8 moves logits by design, so
# only the decision (top-1 class) is checked. At fp16 and int8 decisions are judged only where the
# reference decided clearly: rounding (a few percent of the logit range for two runtimes' Q/DQ
# arithmetic, a few hundredths of a logit at fp16) flips near-ties without making either artifact
# wrong. A broken export still flips the clear decisions.
FP32_MAX_ABS = 1e-3
FP16_MAX_REL = 5e-2
MIN_AGREEMENT = {Precision.FP32: 0.999, Precision.FP16: 0.99, Precision.INT8: 0.95}
CLEAR_MARGIN = 0.1  # top-1 lead over the runner-up, as a fraction of the sample's logit range

RunFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ParityResult:
    """How closely an artifact's logits follow the reference's, and whether that is close enough."""

    precision: str
    n_samples: int
    max_abs_diff: float
    top1_agreement: float
    max_abs_tolerance: float | None  # None: not checked (int8)
    min_agreement: float
    passed: bool
    n_judged: int  # samples whose top-1 was compared (fp16, int8: the clearly decided ones)

    def describe(self) -> str:
        bound = "not checked" if self.max_abs_tolerance is None else f"<= {self.max_abs_tolerance:.3g}"
        return (
            f"max |Δ| = {self.max_abs_diff:.3g} (tolerance {bound}), top-1 agreement = "
            f"{self.top1_agreement:.4f} (minimum {self.min_agreement}) over {self.judged_text()} "
            f"at {self.precision}"
        )

    def judged_text(self) -> str:
        if self.n_judged == self.n_samples:
            return f"{self.n_samples} inputs"
        return f"{self.n_judged} clearly decided of {self.n_samples} inputs"

    def to_dict(self) -> dict:
        return asdict(self)


class ParityError(AssertionError, errors.StageFailed):
    """An artifact's outputs do not match its source's within the precision's tolerance."""

    def __init__(self, message: str, result: ParityResult | None = None):
        super().__init__(message)
        self.result = result


def max_abs_tolerance(ref: np.ndarray, precision: Precision) -> float | None:
    """The |Δ| bound for `precision` given the reference logits (None where |Δ| is not checked)."""
    if precision is Precision.FP32:
        return FP32_MAX_ABS
    if precision is Precision.FP16:
        scale = float(np.max(np.abs(ref))) if ref.size else 1.0
        return FP16_MAX_REL * max(1.0, scale)
    return None


def compare_logits(ref: np.ndarray, out: np.ndarray, precision: Precision | str) -> ParityResult:
    """Compare two (N, classes) logit arrays under `precision`'s tolerance."""
    precision = Precision.parse(precision)
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ParityError(
            f"output shape {out.shape} differs from the reference's {ref.shape}: "
            "the artifact was exported with another head or input size"
        )
    ref2, out2 = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    finite = bool(np.all(np.isfinite(out2)))
    max_abs = float(np.max(np.abs(ref2 - out2))) if finite and ref2.size else float("inf")
    judged = judged_samples(ref2, precision)
    same = ref2.argmax(axis=1) == out2.argmax(axis=1)
    agreement = float(np.mean(same[judged])) if judged.any() else 0.0
    tol = max_abs_tolerance(ref2, precision)
    min_agree = MIN_AGREEMENT[precision]
    passed = finite and len(ref2) > 0 and agreement >= min_agree and (tol is None or max_abs <= tol)
    return ParityResult(precision.value, len(ref2), max_abs, agreement, tol, min_agree, passed,
                        int(judged.sum()))


def judged_samples(ref: np.ndarray, precision: Precision) -> np.ndarray:
    """Mask of the samples whose top-1 decision must agree: all at fp32, the clearly decided at
    fp16 and int8.

    Falls back to all samples when the reference decided none clearly, so a check never passes
    on an empty set.
    """
    everything = np.ones(len(ref), dtype=bool)
    if precision is Precision.FP32 or ref.shape[1] < 2:
        return everything
    ordered = np.sort(ref, axis=1)
    lead = ordered[:, -1] - ordered[:, -2]
    spread = ordered[:, -1] - ordered[:, 0]
    clear = lead >= CLEAR_MARGIN * spread
    return clear if clear.any() else everything
