"""Files shipped inside the package: the embedded demo classifier and explainer (``make demo-bundle``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_DIR"]

#: The embedded demo: ``classifier/`` (a lesion ResNet) and ``explainer/`` (its meta-trained U-Net + ONNX).
DEMO_DIR = Path(__file__).parent / "assets" / "demo"
