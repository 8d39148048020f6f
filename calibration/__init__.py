"""Calibration data for post-training quantization: sources, fingerprints, adapters, tensor cache."""
from calibration.preprocess import Preprocessing
from calibration.source import CalibrationSource, ImageSet

__all__ = ["CalibrationSource", "ImageSet", "Preprocessing"]
