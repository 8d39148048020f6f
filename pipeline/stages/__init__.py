"""The pipeline is this ordered tuple of stages."""
from pipeline.stage_order import STAGE_NAMES  # noqa: F401  (the full product, built or not)
from pipeline.stages.benchmark import STAGE as BENCHMARK
from pipeline.stages.check import STAGE as CHECK
from pipeline.stages.distill import STAGE as DISTILL
from pipeline.stages.export import STAGE as EXPORT
from pipeline.stages.finetune import STAGE as FINETUNE
from pipeline.stages.prune import STAGE as PRUNE
from pipeline.stages.quantize import STAGE as QUANTIZE
from pipeline.stages.report import STAGE as REPORT

STAGES = (FINETUNE, DISTILL, PRUNE, QUANTIZE, EXPORT, BENCHMARK, REPORT, CHECK)
