"""How good and how fast medcam-fast's masks are, measured against the paper's per-image fit and the peers.

* :mod:`.harness` — ``medcam-fast evaluate``: every method's maps on the same images, explained through the
  public :class:`~medcam_fast.explain.MedCAM` for medcam-fast and the registry for the peers, scored by
  :mod:`.metrics` (faithfulness, localization, cascading randomization, paired comparisons) and :mod:`.road`;
* :mod:`.report` and :mod:`.figures` — render what was measured (Markdown, PNG) and write a run's files;
* :mod:`.baselines` — the peers (RISE, Extremal Perturbations, Grad-CAM family, captum), one file per family;
* :mod:`.bench` — ``medcam-fast bench``: the per-image fit's verdict, quality against time, speed.

Measuring never prints (``rich`` lives in the CLI); only the CLI imports this room.
"""
