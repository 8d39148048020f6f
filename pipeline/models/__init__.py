"""Backbones by name, their preprocessing, their layer groups, and checkpoints saved as data."""
from pipeline.models.registry import ModelSpec, build_model, model_preprocessing  # noqa: F401
