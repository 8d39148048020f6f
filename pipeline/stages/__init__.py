"""The pipeline is this ordered tuple of stages, in the order `pipeline.stage_order` declares."""
from pipeline.stage_order import STAGE_NAMES
from pipeline.stages.benchmark import STAGE as BENCHMARK
from pipeline.stages.check import STAGE as CHECK
from pipeline.stages.distill import STAGE as DISTILL
from pipeline.stages.export import STAGE as EXPORT
from pipeline.stages.finetune import STAGE as FINETUNE
from pipeline.stages.prune import STAGE as PRUNE
from pipeline.stages.quantize import STAGE as QUANTIZE
from pipeline.stages.report import STAGE as REPORT

_BY_NAME = {s.name: s for s in (BENCHMARK, CHECK, DISTILL, EXPORT, FINETUNE, PRUNE, QUANTIZE, REPORT)}
if set(_BY_NAME) != set(STAGE_NAMES):   # a stage module and the order table disagree: fail at import
    raise ImportError(f"stage modules {sorted(_BY_NAME)} do not match pipeline.stage_order "
                      f"{list(STAGE_NAMES)}: add or remove the stage in both")
STAGES = tuple(_BY_NAME[name] for name in STAGE_NAMES)
