"""ONNX export of an explainer and a torch-free onnxruntime runtime for it.

Two modules, imported on demand (importing ``medcam_fast.export`` itself imports nothing else, torch
included):

- :mod:`medcam_fast.export.onnx_export` (needs torch, onnx, onnxscript):
  :func:`~medcam_fast.export.onnx_export.export_explainer` writes the explainer U-Net as one self-contained
  ``.onnx`` file (inputs ``image`` float32 ``[B, C, H, W]`` normalized and ``target`` int64 ``[B]``; output
  ``mask_logits`` float32 ``[B, 1, H, W]``; batch, ``H`` and ``W`` dynamic, ``H`` and ``W`` multiples of
  ``2**depth``) with the bundle's facts in its ``metadata_props``;
  :func:`~medcam_fast.export.onnx_export.export_combined` writes an "explain and verify" graph that also
  runs the classifier on the image and on the masked image.
- :mod:`medcam_fast.export.runtime` (needs only numpy, Pillow and onnxruntime — never torch):
  :class:`~medcam_fast.export.runtime.OnnxExplainer` loads such a file, preprocesses raw images, pads to
  the size multiple, and returns :class:`~medcam_fast.export.runtime.RuntimeMasks`.
"""

from __future__ import annotations

__all__: list[str] = []
