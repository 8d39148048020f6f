"""Post-training quantization variants, and the choice among them without looking at val.

When plain PTQ misses its budget, other ways of quantizing the same model often do not: another
calibration method (percentile or entropy ranges clip the rare outliers a min-max range spends
its 256 levels on), or NNCF's bias correction (it shifts each layer's bias back by the mean error
INT8 adds to its output). Which one suits a model is an empirical question, and val cannot answer
it without becoming the thing that was tuned on; so each variant is judged by how often it agrees
with the FP32 model on images that do not judge it (augmented training views), and by how close
its output distribution stays (mean KL divergence) when agreement ties.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.quant_sensitivity import run_onnx


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fidelity(reference: np.ndarray, logits: np.ndarray) -> dict:
    """Top-1 agreement with the reference and mean KL(reference || logits), on the same inputs."""
    p, q = _log_softmax(reference.astype(np.float64)), _log_softmax(logits.astype(np.float64))
    return {"agreement": float(np.mean(reference.argmax(1) == logits.argmax(1))),
            "kl": float(np.mean(np.sum(np.exp(p) * (p - q), axis=1))), "images": int(len(reference))}


def choose_variant(fp32: Path, files: dict[str, tuple[Path, dict]], inputs: np.ndarray) -> tuple[str, dict]:
    """The label of the INT8 file (label -> (path, info)) closest to `fp32` on `inputs`: highest
    agreement, then lowest KL; and every file's figures."""
    reference = run_onnx(fp32, inputs)
    table = {label: fidelity(reference, run_onnx(path, inputs)) for label, (path, _) in files.items()}
    chosen = max(table, key=lambda k: (table[k]["agreement"], -table[k]["kl"]))
    return chosen, table
