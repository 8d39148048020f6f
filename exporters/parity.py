"""Output parity between a source model and its export, with one tolerance per precision.

Every exporter runs both models on the same real input batches after writing and refuses an
artifact whose logits drift beyond its precision's tolerance. Deployment bundles reuse the same
comparison against their golden outputs, adding an int8 logit bound of their own (runtimes/bundle_check.py):
there the reference is the artifact's own recorded output, not another runtime's Q/DQ arithmetic.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from exporters.spec import Precision
# The comparison itself lives in runtimes/ (a device checks bundles with it); re-exported here.
from runtimes.parity import (CLEAR_MARGIN, FP16_MAX_REL, FP32_MAX_ABS, MIN_AGREEMENT,  # noqa: F401
                             ParityError, ParityResult, compare_logits, judged_samples, max_abs_tolerance)

RunFn = Callable[[np.ndarray], np.ndarray]
__all__ = ["CLEAR_MARGIN", "FP16_MAX_REL", "FP32_MAX_ABS", "MIN_AGREEMENT", "ParityError", "ParityResult", "RunFn",
           "check_export", "compare_logits", "judged_samples", "max_abs_tolerance"]


def check_export(
    ref_fn: RunFn,
    out_fn: RunFn,
    batches: Iterable[np.ndarray],
    precision: Precision | str,
    artifact: str = "artifact",
) -> ParityResult:
    """Run reference and artifact on the same batches; return the result or raise ParityError."""
    refs, outs = [], []
    for batch in batches:
        refs.append(np.asarray(ref_fn(batch)))
        outs.append(np.asarray(out_fn(batch)))
    if not refs:
        raise ValueError(f"parity check for {artifact} got no input batches")
    try:
        result = compare_logits(np.concatenate(refs), np.concatenate(outs), precision)
    except ParityError as err:
        raise ParityError(f"parity check failed for {artifact}: {err}") from None
    if not result.passed:
        raise ParityError(
            f"parity check failed for {artifact}: {result.describe()}. The export does not "
            "reproduce its source; check the source model, input preprocessing and precision.",
            result,
        )
    return result
