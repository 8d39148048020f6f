"""Every stage the product has, in pipeline order, with its one-line help.

This table is the one declaration of the order: `pipeline.stages.STAGES` is built from it, the
CLI lists it in `edgeship --help`, and tests hold the stage modules and the Makefile to it. It
imports nothing, so the CLI can read it without loading torch or any stage module.
"""
STAGE_TABLE = (
    ("finetune", "fine-tune a pretrained backbone on your data (the teacher)"),
    ("distill", "distil the teacher into a compact student"),
    ("prune", "structured channel pruning of the student, accuracy recovered"),
    ("quantize", "INT8 Q/DQ ONNX from calibration data, accuracy-aware"),
    ("export", "ONNX, OpenVINO IR and TensorRT engines, each checked against the source"),
    ("benchmark", "accuracy and latency of every artifact on every runtime"),
    ("report", "report.json / .md / .html"),
    ("check", "budgets -> exit code (CI gate)"),
)
STAGE_NAMES = tuple(name for name, _ in STAGE_TABLE)


def stage_list(indent: str = "  ") -> str:
    """The table as help text, one stage per line: name, then its help."""
    width = max(len(name) for name in STAGE_NAMES) + 1
    return "\n".join(f"{indent}{name:<{width}} {text}" for name, text in STAGE_TABLE)
