"""Backbones by name, their preprocessing, their layer groups, their cost, and checkpoints saved as
data (pruned ones too); `loading` turns them into stage artifacts and back."""
from pipeline.models.registry import ModelSpec, build_model, model_preprocessing  # noqa: F401
