"""Images in, model-ready arrays out: preprocessing, image files, MedMNIST files and procedural lesions.

The lowest room above the base: numpy, Pillow and the standard library only (no torch), importing nothing
of the project but the base modules, so the torch-free ONNX runtime can use it. It re-exports nothing:
import from :mod:`.preprocess`, :mod:`.images`, :mod:`.medmnist` and :mod:`.lesions`; the public face is
``medcam_fast/__init__.py``.
"""
