"""Explainers: bundles of a trained U-Net and its facts, and the meta-training that produces them.

:mod:`.bundle` (:class:`~.bundle.ExplainerBundle`, :class:`~.bundle.ExplainerSettings`, saving and loading,
safetensors only) and :mod:`.meta` (:func:`~.meta.meta_train`: MAML or amortized training). It may import
the base modules, data, classifiers and method, never :mod:`medcam_fast.explain` or anything above. It
re-exports nothing: import from the submodules; the public face is ``medcam_fast/__init__.py``.
"""
