"""quantize: the pruned student as one INT8 Q/DQ ONNX, accuracy-aware, scored in ONNX Runtime."""
from __future__ import annotations

import functools
import itertools
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.artifact import Artifact, Format
from pipeline.config import Config, PTQVariant, QuantMethod
from pipeline.models.loading import load_model
from pipeline.stages.base import Context, Result, Stage
from pipeline.stages.common import data_params

logger = logging.getLogger(__name__)


def _requested_scheme(cfg: Config) -> str | None:
    """The configured scheme, or None for auto (the quantizer then picks one and records why)."""
    return None if cfg.quantize.scheme.value == "auto" else cfg.quantize.scheme.value


def _scheme(cfg: Config) -> str:
    """The concrete activation/weight scheme (auto resolves on this CPU, so it joins the key)."""
    from exporters.onnx_int8 import choose_scheme
    return choose_scheme(_requested_scheme(cfg))[0].value


def params(cfg: Config) -> dict:
    # Which runtimes scored the search decides the result: a file searched without OpenVINO is
    # searched again once OpenVINO can run here.
    return {**data_params(cfg), "quantize": cfg.quantize.model_dump(mode="json"),
            "scheme": _scheme(cfg), "opset": cfg.export.opset, "seed": cfg.run.seed,
            "scored_in": scorers()[0]}


# The one Q/DQ file is served by both CPU runtimes; each executes it with its own kernels.
SCORING_RUNTIMES = ("onnxruntime", "openvino")


def scorers() -> tuple[list[str], dict[str, str]]:
    """The CPU runtimes serving the Q/DQ file that can run here, and why each other one cannot."""
    import runtimes
    found = {name: runtimes.get(name).unavailable("cpu") for name in SCORING_RUNTIMES}
    return ([name for name, reason in found.items() if reason is None],
            {name: reason for name, reason in found.items() if reason is not None})


def onnx_correct(path: Path, val, pre, threads: int, names: list[str], log: dict | None = None):
    """Per-image correctness on val of an ONNX file in the CPU runtime, of `names`, that scores it
    lowest: the accuracy budget must hold wherever the file is deployed. Each runtime's top-1 is
    appended to `log`."""
    from pipeline.measure.scoring import predict, top1
    from runtimes.execution import open_model
    scores, correct = {}, {}
    for name in names:
        loaded = open_model(path, Format.onnx, name, "cpu", threads, pre.precision)
        predicted = predict(loaded, val, pre, chunk=1).argmax(1)
        scores[name], correct[name] = top1(predicted, val.targets), predicted == np.asarray(val.targets)
    if log is not None:
        log.setdefault(Path(path).name, []).append(scores)
    return correct[min(scores, key=scores.get)]


def export_fp32(model, pre, out_dir: Path, cfg: Config, val) -> Path:
    """Torch -> FP32 ONNX (static batch 1), parity checked on real val images."""
    from exporters.onnx_export import export_torch_to_onnx
    from exporters.spec import ExportSpec
    checks = list(itertools.islice(val.chunks(pre, 1), 32))
    spec = ExportSpec(preprocessing=pre, opset=cfg.export.opset, name="model_fp32", check_inputs=checks)
    return export_torch_to_onnx(model, out_dir, spec)


def quantizers(cfg: Config) -> tuple[Callable, dict[str, Callable]]:
    """The configured quantizer, and the PTQ variants tried when it misses the budget (label ->
    quantizer); a variant that needs what is not installed is left out with a warning."""
    from exporters.onnx_int8 import quantize_onnx
    from exporters.onnx_int8_nncf import nncf_unavailable, quantize_onnx_nncf
    q = cfg.quantize
    common = {"per_channel": q.per_channel, "scheme": _requested_scheme(cfg)}
    base = quantize_onnx_nncf if q.method == QuantMethod.nncf else quantize_onnx
    plain = functools.partial(base, method=q.calibration.method.value, **common)
    variants = {}
    for v in q.variants:
        if v == PTQVariant.nncf_bias_correction:
            reason = nncf_unavailable()
            if reason:
                logger.warning(f"quantize: variant {v.value} skipped: {reason}")
            elif q.method != QuantMethod.nncf:  # the nncf quantizer corrects biases already
                variants["nncf, bias correction"] = functools.partial(quantize_onnx_nncf, **common)
        elif v.value != q.calibration.method.value:
            variants[f"{q.method.value} {v.value}"] = functools.partial(base, method=v.value, **common)
    return plain, variants


def views_augment():
    """The views INT8 is tuned on without labels (variant choice, QAT): crops, flips, small
    rotations and colour jitter, milder than training's mixing, so each view is still a photo."""
    from pipeline.config import Augment
    return Augment(random_resized_crop=(0.5, 1.0), hflip=True, rotation_deg=10, color_jitter=0.2)


def selection_views(train, pre, cfg: Config) -> np.ndarray:
    """Augmented views of training images (crop, flip, small rotation, colour jitter): the images
    that choose among PTQ variants, so val only judges the result."""
    from calibration.source import stratified_sample
    from pipeline.data.transforms import TrainTransform
    n = cfg.quantize.selection_views
    positions = stratified_sample(train.ids, train.targets, min(n, len(train.ids)), cfg.run.seed + 1)
    view = TrainTransform(pre, views_augment(), cfg.run.seed)
    picks = [positions[k % len(positions)] for k in range(n)]  # several views of each when train is small
    return np.stack([view(train.image(p), k // len(positions), p) for k, p in enumerate(picks)]).astype(np.float32)


def run(ctx: Context) -> Result:
    import onnx

    from calibration.source import CalibrationSource
    from exporters.quant_search import accuracy_aware_quantize
    from pipeline.data import load_splits
    from pipeline.measure.scoring import ValImages

    cfg, q = ctx.cfg, ctx.cfg.quantize
    names, skipped = _scorers()
    model, pre = load_model(ctx.input("prune"))
    splits = load_splits(cfg.data, cfg.run.seed)
    val = ValImages(splits.val)
    fp32 = export_fp32(model, pre, ctx.out_dir, cfg, val)
    source = CalibrationSource.from_imageset(splits.train, pre, size=min(q.calibration.size, len(splits.train)),
                                             seed=q.calibration.seed,
                                             cache_dir=ctx.store_root / "cache" / "calibration")
    plain, variants = quantizers(cfg)
    scores: dict = {}
    evaluate = functools.partial(onnx_correct, val=val, pre=pre, threads=cfg.run.thread_count(), names=names,
                                 log=scores)
    sensitivity = functools.partial(val.batch, pre, min(q.sensitivity_samples, val.count))
    selection = functools.partial(selection_views, splits.train, pre, cfg) if variants else None
    int8, report = accuracy_aware_quantize(fp32, ctx.out_dir, source, evaluate, q.max_accuracy_drop, plain,
                                           sensitivity, max_excluded=q.max_float_layers,
                                           max_candidates=q.rank_candidates, variants=variants,
                                           selection_inputs=selection)
    if report["steps"]:
        from exporters.quant_search import format_table
        logger.info("quantize: layers kept in float, one at a time:\n%s", format_table(report))
    report["qat"] = None
    if not report["within_budget"] and q.qat.enabled:
        report["qat"] = with_qat(cfg, model, pre, splits, source, plain, evaluate, report, int8, ctx.out_dir, val)
    _stamp_precision(int8, pre)
    budget = budget_verdict(report, q.max_accuracy_drop)
    meta = {"preprocessing": pre.with_(precision="int8").to_dict(), "precision": "int8"}
    if not report["within_budget"]:
        meta["not_deployable"] = budget["text"]
        logger.warning(f"quantize: {budget['text']}. The run goes on: the INT8 file is benchmarked and "
                       "marked, and is not deployed; check judges the run by its budgets.")
    metrics = {
        "fp32_top1": report["fp32_accuracy"], "int8_top1": report["final_accuracy"],
        "scored_in": names, "not_scored_in": skipped, "per_runtime_top1": scores,
        "drop": report["final_drop"], "first_int8_top1": report["int8_accuracy"],
        "within_budget": report["within_budget"], "budget": budget, "chosen": report["chosen"],
        "float_layers": report["excluded"], "float_modules": report["modules"], "steps": report["steps"],
        "variants": report["variants"], "tried": report["tried"], "ranking": report["ranking"],
        "quantizer": report["quantizer"], "qat": report["qat"],
        "calibration": {"fingerprint": source.fingerprint, "size": len(source.data),
                        "seed": q.calibration.seed, "method": q.calibration.method.value},
        "search_seconds": report["seconds"], "onnx_opset": onnx.load(fp32, load_external_data=False).opset_import[0].version,
    }
    return Result(outputs={
        "onnx_fp32": Artifact.of(ctx.out_dir, fp32, Format.onnx,
                                 {"preprocessing": pre.to_dict(), "precision": "fp32"}),
        "onnx_int8": Artifact.of(ctx.out_dir, int8, Format.onnx, meta),
    }, metrics=metrics)


def with_qat(cfg: Config, model, pre, splits, source, quantize_fn, evaluate, report: dict, int8: Path,
             out_dir: Path, val) -> dict:
    """Quantization-aware fine-tuning when PTQ missed: the float model fine-tuned under fake INT8
    to match its own logits on augmented training views (and distill.unlabelled_root images), then
    plain PTQ. Its INT8 file replaces `int8` (and its figures `report`'s) when it holds the budget
    or is more accurate. Returns what QAT did and scored."""
    import shutil

    import torch

    from exporters.onnx_int8 import QuantScheme, choose_scheme
    from exporters.quant_search import accuracy_aware_quantize, within
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.train.qat import finetune_for_int8
    q = cfg.quantize
    views = TorchImageSet(splits.train, pre, views_augment(), cfg.run.seed).unlabelled()
    if cfg.distill.unlabelled_root:
        from pipeline.data.imagefolder import load_unlabelled_folder
        extra = load_unlabelled_folder(cfg.distill.unlabelled_root, cfg.data.skip_corrupt)
        views = torch.utils.data.ConcatDataset([views, TorchImageSet(extra, pre, None, cfg.run.seed).unlabelled()])
    bits = 7 if choose_scheme(_requested_scheme(cfg))[0] is QuantScheme.U8S8_REDUCE_RANGE else 8
    torch.manual_seed(cfg.run.seed)
    trained, info = finetune_for_int8(model.cpu().eval(), torch.from_numpy(source.tensors()), views, bits,
                                      q.qat.epochs, q.qat.lr, q.qat.max_seconds, q.qat.batch_size)
    work = out_dir / ".qat"
    try:
        fp32 = export_fp32(trained, pre, work, cfg, val)
        path, scored = accuracy_aware_quantize(fp32, work, source, evaluate, q.max_accuracy_drop, quantize_fn,
                                               np.empty(0), max_excluded=0)
        accuracy = scored["final_accuracy"]
        drop = report["fp32_accuracy"] - accuracy  # against the model that ships in FP32, not QAT's
        used = within(drop, q.max_accuracy_drop) or accuracy > report["final_accuracy"]
        info.update(int8_top1=accuracy, drop=drop, used=used, qat_fp32_top1=scored["fp32_accuracy"],
                    instead_of=report["chosen"])
        if used:
            path.replace(int8)
            report.update(final_accuracy=accuracy, final_drop=drop, within_budget=within(drop, q.max_accuracy_drop),
                          chosen="QAT, then plain PTQ", excluded=[], modules={}, quantizer=scored["quantizer"],
                          final_correct=scored["final_correct"])
        logger.info(f"quantize: QAT in {info['seconds']:.0f} s: INT8 {accuracy:.2f}% (FP32 "
                    f"{report['fp32_accuracy']:.2f}%), {'used' if used else 'not better, not used'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def budget_verdict(report: dict, max_drop: float) -> dict:
    """The INT8 file against quantize.max_accuracy_drop, with the paired interval and the images
    each side alone gets right (on a val split of 150 images, one image is 0.67 points)."""
    from pipeline.measure.accuracy_interval import describe, paired_difference
    diff = paired_difference(report["final_correct"], report["fp32_correct"])
    held = report["within_budget"]
    text = (f"INT8 ({report['chosen']}) {report['final_accuracy']:.2f}% vs FP32 {report['fp32_accuracy']:.2f}%: "
            f"{describe(diff, 'INT8', 'FP32')}; {'within' if held else 'outside'} quantize.max_accuracy_drop "
            f"{max_drop:g} points")
    return {"held": held, "drop_points": report["final_drop"], "interval": diff, "text": text}


def _scorers() -> tuple[list[str], dict[str, str]]:
    """`scorers()`, saying once which runtime cannot score here; none at all is an error."""
    from runtimes.errors import Unavailable
    names, skipped = scorers()
    if not names:
        raise Unavailable("quantize: no runtime here can score the INT8 file: "
                          + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    for name, reason in skipped.items():
        logger.warning(f"quantize: the accuracy budget is held in {', '.join(names)} only; {name} "
                       f"cannot run here ({reason})")
    return names, skipped


def _stamp_precision(path: Path, pre) -> None:
    """The Q/DQ file inherits the FP32 file's metadata; mark it int8 so runtimes read it right."""
    import onnx

    from runtimes.formats.onnx_format import write_preprocessing
    model = onnx.load(path)
    write_preprocessing(model, pre.with_(precision="int8").to_dict())
    tmp = path.with_suffix(".tmp")
    onnx.save(model, tmp)
    tmp.replace(path)


STAGE = Stage(name="quantize", version=3, deps=("prune",), params=params, run=run)
