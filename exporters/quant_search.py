"""Accuracy-aware INT8: the best Q/DQ file this model allows, within the budget when one exists.

The search, cheapest first, stopping as soon as the top-1 drop is within `max_drop`:
1. plain post-training quantization with the configured quantizer;
2. other PTQ variants (calibration methods, bias correction), the one that agrees best with the
   FP32 model on images that do not judge it (augmented training views), see quant_variants;
3. layers kept in float, one at a time, each the layer that gives back most on the images whose
   top-1 flipped, re-ranked after every revert, until reverting stops helping (quant_sensitivity).
When nothing reaches the budget, the best INT8 file found is kept and the report says by how much
it misses: the run goes on, the file is marked outside the budget, and `check` judges the run.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from calibration.source import CalibrationSource
from exporters.onnx_int8 import prepare_for_quantization
from exporters.quant_sensitivity import (candidate_layers, module_names, problem_images, ranked, revert_gains,
                                         run_onnx)
from runtimes.progress import progress

QuantizeFn = Callable[..., tuple[Path, dict]]
"""(fp32_path, out_path, source, *, nodes_to_exclude, calibration_cache) -> (path, info), e.g.
`exporters.onnx_int8.quantize_onnx` or a functools.partial of it with method/scheme set."""

Evaluate = Callable[[Path], np.ndarray]
"""ONNX file -> per-image correctness on the images that judge the budget (bool array)."""

log = logging.getLogger(__name__)

# Reverts re-ranked after the first full ranking: the best of the previous ranking only, so a
# re-rank costs a handful of quantizations rather than one per layer (each is seconds for an
# EfficientNet-Lite on 2 cores).
RERANK_WIDTH = 4
# Reverts in a row that leave val top-1 where it was before the search stops: the loss is spread
# too thin for layers kept in float to win it back, and QAT is the better use of the time.
PATIENCE = 3


def within(drop: float, max_drop: float) -> bool:
    """Whether a drop in points holds the budget (percentages of one image set differ by whole
    images; the tolerance only absorbs float rounding of their difference)."""
    return drop <= max_drop + 1e-9


@dataclass
class Tried:
    """One INT8 file scored on val: what it is, and its per-image correctness."""

    path: Path
    label: str
    excluded: list[str]
    info: dict
    correct: np.ndarray
    recipe: tuple[QuantizeFn, str]  # the quantizer and its calibration-range cache, for reverts

    @property
    def accuracy(self) -> float:
        return 100.0 * float(np.mean(self.correct))


def accuracy_aware_quantize(
    fp32_path: Path | str,
    out_dir: Path | str,
    source: CalibrationSource,
    evaluate: Evaluate,
    max_drop: float,
    quantize_fn: QuantizeFn,
    sensitivity_inputs: np.ndarray | Callable[[], np.ndarray],
    max_excluded: int = 10,
    max_candidates: int = 12,
    variants: dict[str, QuantizeFn] | None = None,
    selection_inputs: np.ndarray | Callable[[], np.ndarray] | None = None,
) -> tuple[Path, dict]:
    """The INT8 Q/DQ ONNX (out_dir/model_int8.onnx) whose val top-1 drop is within `max_drop`
    points of FP32 at the least cost, or else the most accurate one found; and the report.

    `evaluate` gives per-image correctness on val. `variants` (label -> quantizer) are tried when
    plain PTQ misses, chosen by agreement with FP32 on `selection_inputs` (an array, or a function
    that makes it, called only then; default: the calibration images). Layers are ranked on
    the problem images among `sensitivity_inputs` (an array, or a function making it), at most `max_candidates` of them (pre-cut by a
    cheap proxy), and at most `max_excluded` are kept in float. report["within_budget"] says
    whether the budget holds; report["miss"] says why not when it does not.
    """
    if max_drop < 0:
        raise ValueError(f"max_drop {max_drop} must be >= 0 top-1 points (the tolerated FP32 -> INT8 loss)")
    if max_excluded < 0 or max_candidates < 1:
        raise ValueError(f"max_excluded {max_excluded} must be >= 0 and max_candidates {max_candidates} >= 1")
    t0 = time.perf_counter()
    fp32_path, out_dir = Path(fp32_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".int8-search-", dir=out_dir))
    try:
        search = _Search(fp32_path, work, source, evaluate, max_drop, quantize_fn)
        best = search.plain()
        report = search.report
        report["int8_accuracy"] = best.accuracy
        if not search.holds(best) and variants:
            best = search.best_variant(variants, selection_inputs)
        if not search.holds(best) and max_excluded:
            best = search.float_fallback(search.revert_start(best), sensitivity_inputs, max_excluded, max_candidates)
        final = search.keep(best, out_dir / "model_int8.onnx")
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return final, report
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Search:
    """The state of one search: the prepared model, every file tried, and the report."""

    def __init__(self, fp32_path: Path, work: Path, source: CalibrationSource, evaluate: Evaluate,
                 max_drop: float, quantize_fn: QuantizeFn):
        import onnx
        self.work, self.source, self.evaluate, self.max_drop = work, source, evaluate, max_drop
        self.quantize_fn = quantize_fn
        self.prepared, _ = prepare_for_quantization(fp32_path, work / "prepared.onnx")
        self.fp32_correct = np.asarray(evaluate(fp32_path), dtype=bool)
        self.tried: list[Tried] = []
        self.names = module_names(onnx.load(str(fp32_path), load_external_data=False))
        self.report: dict = {
            "fp32_accuracy": 100.0 * float(np.mean(self.fp32_correct)), "max_drop": max_drop,
            "steps": [], "excluded": [], "variants": {}, "modules": {}, "ranking": []}

    def quantize(self, excluded: list[str], name: str, recipe: tuple[QuantizeFn, str] | None = None
                 ) -> tuple[Path, dict]:
        fn, cache = recipe or (self.quantize_fn, "ranges.json")
        return fn(self.prepared, self.work / name, self.source, nodes_to_exclude=excluded,
                  calibration_cache=self.work / cache)

    def score(self, path: Path, info: dict, label: str, excluded: list[str],
              recipe: tuple[QuantizeFn, str] | None = None) -> Tried:
        tried = Tried(path, label, list(excluded), info, np.asarray(self.evaluate(path), dtype=bool),
                      recipe or (self.quantize_fn, "ranges.json"))
        self.tried.append(tried)
        return tried

    def drop(self, t: Tried) -> float:
        return self.report["fp32_accuracy"] - t.accuracy

    def holds(self, t: Tried) -> bool:
        return within(self.drop(t), self.max_drop)

    def plain(self) -> Tried:
        path, info = self.quantize([], "plain.onnx")
        return self.score(path, info, "plain PTQ", [])

    def best_variant(self, variants: dict[str, QuantizeFn], selection_inputs) -> Tried:
        """Every variant scored by agreement with FP32 on `selection_inputs`; the best one is then
        scored on val (and every one is, for the record: the choice does not look at val)."""
        from exporters.quant_variants import choose_variant
        plain = self.tried[0]
        files = {plain.label: (plain.path, plain.info)}
        recipes = {label: (fn, f"ranges_{k}.json") for k, (label, fn) in enumerate(variants.items())}
        for k, (label, recipe) in enumerate(recipes.items()):
            try:
                files[label] = self.quantize([], f"variant_{k}.onnx", recipe)
            except Exception as exc:  # a variant that cannot run here is a finding, not a crash
                self.report["variants"][label] = {"error": f"{type(exc).__name__}: {exc}"}
                log.warning("quantize: variant %s failed: %s", label, exc)
        inputs = selection_inputs() if callable(selection_inputs) else selection_inputs
        inputs = inputs if inputs is not None else self.source.tensors()
        chosen, table = choose_variant(self.prepared, files, inputs)
        for label, (path, info) in files.items():
            t = plain if label == plain.label else self.score(path, info, label, [], recipes[label])
            self.report["variants"][label] = {**table[label], "val_accuracy": t.accuracy, "drop": self.drop(t),
                                              "chosen": label == chosen, "quantizer": info}
        self.report["variant_chosen"] = chosen
        return next(t for t in self.tried if t.label == chosen)

    def revert_start(self, chosen: Tried) -> Tried:
        """The file layers go back to float from: `chosen` when its quantizer reuses its calibrated
        ranges, else plain PTQ. The ranking quantizes once per candidate layer, and NNCF calibrates
        again on every call (30 s each for efficientnet_lite0 at 64 px on 2 cores: six minutes
        to rank 12 layers, against seconds with cached ranges)."""
        start = chosen if chosen.info.get("calibration_cache") in ("written", "hit") else self.tried[0]
        self.report["reverted_from"] = start.label
        return start

    def float_fallback(self, base: Tried, inputs, max_excluded: int, max_candidates: int) -> Tried:
        """Keep layers in float, one at a time, each the best revert on the problem images, until
        the budget holds, `max_excluded` are reverted, or no revert gives anything back."""
        inputs = inputs() if callable(inputs) else inputs
        layers = candidate_layers(self.prepared, inputs, max_candidates, self.report)
        reference = run_onnx(self.prepared, inputs)
        current, excluded, best, idle, flat = base, [], base, False, 0
        order: list[str] = []
        for k in progress(range(max_excluded), desc="quantize: float fallback", unit="layers", log=log):
            current_logits = run_onnx(current.path, inputs)
            problems = problem_images(reference, current_logits)
            pool = [n for n in (order[:RERANK_WIDTH + 1] if order else layers) if n not in excluded]
            if not pool or not len(problems):
                break
            gains = revert_gains(pool, excluded, lambda ex, name: self.quantize(ex, name, base.recipe)[0],
                                 inputs[problems], reference[problems], current_logits[problems])
            order = ranked(gains)
            self.report["ranking"].append({"problem_images": len(problems),
                                           "layers": [{"layer": n, "module": self.names.get(n), **gains[n]}
                                                      for n in order]})
            layer, why = order[0], "gives back most on the problem images"
            if gains[layer]["recovered"] <= 0 and gains[layer]["gain"] <= 0:
                if idle:  # two reverts in a row gave nothing back: more of them will not either
                    self.report["stopped"] = "no layer kept in float gives anything back on the problem images"
                    break
                # No single revert helps when two layers each ruin the output on their own; the
                # noisiest by rounding noise goes first, and the ranking then sees the other.
                layer = max(pool, key=lambda n: self.report["proxy"].get(n, 0.0))
                why, idle, order = "noisiest by rounding noise (no single revert helped)", True, []
            else:
                idle = False
            excluded = excluded + [layer]
            path, info = self.quantize(excluded, f"step_{k + 1}.onnx", base.recipe)
            current = self.score(path, info, f"{base.label}, {len(excluded)} in float", excluded, base.recipe)
            self.report["steps"].append({"layer": layer, "module": self.names.get(layer), **gains[layer], "why": why,
                                         "accuracy": current.accuracy, "drop": self.drop(current)})
            flat = 0 if current.accuracy > best.accuracy else flat + 1
            if current.accuracy > best.accuracy:
                best = current
            if self.holds(current):
                break
            if flat >= PATIENCE:
                self.report["stopped"] = f"{PATIENCE} layers kept in float in a row did not raise val top-1"
                break
        return best

    def keep(self, chosen: Tried, final: Path) -> Path:
        """Publish `chosen` as `final`; when it misses the budget, any file tried that holds it
        (fewest float layers first), else the most accurate one tried."""
        if not self.holds(chosen):
            within = [t for t in self.tried if self.holds(t)]
            chosen = (min(within, key=lambda t: (len(t.excluded), -t.accuracy)) if within
                      else max(self.tried, key=lambda t: (t.accuracy, -len(t.excluded))))
        r = self.report
        r.update(final_accuracy=chosen.accuracy, final_drop=self.drop(chosen), within_budget=self.holds(chosen),
                 chosen=chosen.label, excluded=chosen.excluded, quantizer=chosen.info,
                 modules={n: self.names[n] for n in chosen.excluded if n in self.names},
                 final_correct=chosen.correct.tolist(), fp32_correct=self.fp32_correct.tolist(),
                 tried=[{"label": t.label, "float_layers": len(t.excluded), "accuracy": t.accuracy,
                         "drop": self.drop(t)} for t in self.tried])
        if not r["within_budget"]:
            r["miss"] = (f"no INT8 file tried is within max_drop {self.max_drop:g} points: the best, "
                         f"{chosen.label}, scores {chosen.accuracy:.2f}% against FP32's "
                         f"{r['fp32_accuracy']:.2f}% ({len(self.tried)} tried)")
        os.replace(chosen.path, final)
        return final


def format_table(report: dict) -> str:
    """The fallback steps as a plain-text table (layer, its torch module, top-1 after, drop)."""
    lines = [f"  {'#':>2}  {'layer kept in float':<28} {'torch module':<34} {'top-1 after':>11} {'drop':>6}"]
    lines.append(f"  {0:>2}  {'(none: all layers INT8)':<28} {'':<34} {report['int8_accuracy']:>10.2f}% "
                 f"{report['fp32_accuracy'] - report['int8_accuracy']:>6.2f}")
    for k, step in enumerate(report["steps"], 1):
        lines.append(f"  {k:>2}  {step['layer']:<28} {step.get('module') or '?':<34} {step['accuracy']:>10.2f}% "
                     f"{step['drop']:>6.2f}")
    return "\n".join(lines)
