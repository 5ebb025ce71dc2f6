"""The package version: one owner, read by ``medcam_fast.__version__``, bundles, ONNX metadata and records."""

__version__ = "0.1.0"
