"""Frozen classifiers: built-in architectures, activation capture, safe bundles, users' own models, training.

The torch room of the classifier medcam-fast explains: :mod:`.architectures`, :mod:`.frozen`, :mod:`.weights`,
:mod:`.sources`, :mod:`.bundle` and :mod:`.training`. It may import the base modules (errors, _io, types,
_version) and :mod:`medcam_fast.data`, never the method, the explainer or anything above. It re-exports
nothing: import from the submodules; the public face is ``medcam_fast/__init__.py``.
"""
