"""The Med-CAM maths: masking, losses, U-Net, objective, inner loops, per-image fit, refinement, results.

Computation on tensors only: no files, no console. It may import the base modules, data and classifiers
(today it needs only :mod:`medcam_fast.types`, whose :class:`~medcam_fast.types.Classifier` protocol stands
for the frozen classifier), never the explainer or anything above. It re-exports nothing: import from the
submodules; the public face is ``medcam_fast/__init__.py``.
"""
