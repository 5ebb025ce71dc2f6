"""How good and how fast medcam-fast's masks are, measured against the paper's per-image fit and the peers.

* :mod:`.harness` — ``medcam-fast evaluate``: every method's maps on the same images, explained through the
  public :class:`~medcam_fast.explain.MedCAM` for medcam-fast and the registry for the peers, cached, and
  checked by cascading randomization;
* :mod:`.scoring` — every map scored by :mod:`.metrics` (faithfulness, localization, readability, paired
  comparisons with Holm's correction) and :mod:`.road` under every fill of :mod:`.fills` (zero, mean, blur,
  ROAD's noisy linear imputation), beside the controls of :mod:`.controls` (random map, fill alone, random
  blob) and at each binary mask's own area;
* :mod:`.report` and :mod:`.figures` — render what was measured (Markdown, PNG) and write a run's files;
* :mod:`.baselines` — the peers (RISE, Extremal Perturbations, Grad-CAM family, captum), one file per family;
* :mod:`.bench` — ``medcam-fast bench``: the per-image fit's verdict, quality against time, speed.

Measuring never prints (``rich`` lives in the CLI); only the CLI imports this room.
"""
