"""The pipeline is this ordered tuple of stages."""
from pipeline.stage_order import STAGE_NAMES  # noqa: F401  (the full product, built or not)
from pipeline.stages.finetune import STAGE as FINETUNE

STAGES = (FINETUNE,)
