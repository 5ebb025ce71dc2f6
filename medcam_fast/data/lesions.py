"""Procedural data with known evidence: a two-class set whose label depends on one lesion alone.

:func:`make_lesions` renders ``benign`` / ``lesion`` images (:data:`LESION_CLASSES`): a tissue-like
background, two to four benign distractor blobs and exactly one candidate — spiculated with a speckled,
striped interior in a positive image, smooth and round in a negative one. Both kinds draw area, contrast and
interior variance from the same distributions, so only the candidate's shape and texture carry the label;
the masks mark the candidate, the true evidence of class 1 (``evidence_class = 1``). Image ``i`` depends
on ``(seed, i)`` alone, and ``erase_candidate=True`` renders the same images without it. numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError
from .images import ImageSet

__all__ = ["LESION_CLASSES", "make_lesions"]


#: Class names of :func:`make_lesions` (label 0, label 1).
LESION_CLASSES: tuple[str, str] = ("benign", "lesion")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """White noise smoothed by a Gaussian of ``sigma`` pixels (periodic, via FFT), normalized to unit std."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fy * fy + fx * fx))
    out = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=shape)
    return (out - out.mean()) / (out.std() + 1e-12)


def _weighted_standardize(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``x`` shifted and scaled to zero mean and unit std under ``weight`` (weight > 0 somewhere)."""
    w = weight / weight.sum()
    mean = float((x * w).sum())
    std = math.sqrt(max(float(((x - mean) ** 2 * w).sum()), 1e-12))
    return (x - mean) / std


def _lesion_image(seed: int, index: int, size: int, positive_fraction: float,
                  erase_candidate: bool) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Render one procedural image (float grey on about [0, 1]) from (seed, index) alone.

    Every random number is drawn in the same order whatever the label and ``erase_candidate``, so the label
    flips nothing but the candidate, and erasing changes nothing but the candidate's pixels.

    Returns:
        (grey image float64 HW, label, candidate mask bool HW, RGB tint (3,)).
    """
    rng = np.random.default_rng([int(seed), int(index)])
    s = size
    label = int(rng.random() < positive_fraction)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    scale = s / 32.0

    # Tissue-like background: a level, a low-frequency gradient, smoothed noise at two scales, mild noise.
    level = rng.uniform(0.38, 0.58)
    g_angle, g_amp = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.16)
    ramp = ((xx - s / 2) * math.cos(g_angle) + (yy - s / 2) * math.sin(g_angle)) / s
    coarse = _smooth_noise(rng, (s, s), sigma=rng.uniform(3.0, 5.0) * scale)
    fine = _smooth_noise(rng, (s, s), sigma=rng.uniform(1.2, 2.0) * scale)
    img = level + g_amp * ramp + rng.uniform(0.03, 0.06) * coarse + rng.uniform(0.015, 0.03) * fine
    sensor = rng.standard_normal((s, s)) * 0.008

    # The candidate's site, area, contrast and internal-variation strength (class independent).
    area = rng.uniform(0.03, 0.10) * s * s
    r_eq = math.sqrt(area / math.pi)
    margin = r_eq * 1.7 + 1.0  # keeps spikes inside; margin <= 0.31 s + 1 < s / 2
    cy, cx = rng.uniform(margin, s - margin, size=2)
    contrast = rng.choice([-1.0, 1.0]) * rng.uniform(0.14, 0.26)
    variation = rng.uniform(0.07, 0.11)

    # Two to four benign distractors: smooth soft-edged ellipses (four always drawn, some unused).
    n_distract = int(rng.integers(2, 5))
    d_params = []
    for _ in range(4):
        d_area = rng.uniform(0.02, 0.07) * s * s
        aspect = rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, math.pi)
        dy, dx = rng.uniform(0.08 * s, 0.92 * s, size=2)
        d_contrast = rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.26)
        d_params.append((d_area, aspect, angle, dy, dx, d_contrast))
    for d_area, aspect, angle, dy, dx, d_contrast in d_params[:n_distract]:
        a = math.sqrt(d_area / (math.pi * aspect))
        b = a * aspect
        u = (xx - dx) * math.cos(angle) + (yy - dy) * math.sin(angle)
        v = -(xx - dx) * math.sin(angle) + (yy - dy) * math.cos(angle)
        rho2 = (u / a) ** 2 + (v / b) ** 2
        img = img + d_contrast * np.exp(-1.6 * rho2 ** 1.6)

    # Shape parameters of both candidate kinds (always drawn).
    theta = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(yy - cy, xx - cx)
    n_spikes = int(rng.integers(6, 10))
    spike_angles = rng.uniform(0, 2 * math.pi) + np.arange(n_spikes) * 2 * math.pi / n_spikes \
        + rng.uniform(-0.25, 0.25, size=n_spikes)
    spike_heights = rng.uniform(0.45, 0.85, size=n_spikes)
    lobe_amp, lobe_phase = rng.uniform(0.05, 0.15, size=2), rng.uniform(0, 2 * math.pi, size=2)
    speckle = rng.standard_normal((s, s))
    stripe_angle, stripe_period = rng.uniform(0, math.pi), rng.uniform(2.6, 3.6) * max(1.0, scale * 0.75)
    stripe_phase = rng.uniform(0, 2 * math.pi)
    round_aspect, round_angle = rng.uniform(0.8, 1.0), rng.uniform(0, math.pi)
    smooth_dir = rng.uniform(0, 2 * math.pi)

    if label == 1:  # spiculated outline: a base radius with lobes and narrow spikes, scaled to the area
        def profile(t: np.ndarray) -> np.ndarray:
            """Radius relative to the base radius at angles ``t``."""
            delta = (t[..., None] - spike_angles + math.pi) % (2 * math.pi) - math.pi
            spikes = (spike_heights * np.exp(-(delta / 0.17) ** 2)).sum(-1)
            lobes = lobe_amp[0] * np.cos(2 * t + lobe_phase[0]) + lobe_amp[1] * np.cos(3 * t + lobe_phase[1])
            return 1.0 + lobes + spikes

        grid = np.linspace(0, 2 * math.pi, 360, endpoint=False)
        base = math.sqrt(area / (0.5 * float(np.mean(profile(grid) ** 2)) * 2 * math.pi))
        radius = base * profile(theta)
    else:  # smooth round (slightly elliptical) blob of the same area
        a = math.sqrt(area / (math.pi * round_aspect))
        b = a * round_aspect
        phi = theta - round_angle
        radius = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    alpha = np.clip(radius - dist + 0.5, 0.0, 1.0)
    mask = alpha > 0

    if label == 1:  # distinct internal texture: speckle and stripes
        stripes = np.sin(2 * math.pi * ((xx - cx) * math.cos(stripe_angle) + (yy - cy) * math.sin(stripe_angle))
                         / stripe_period + stripe_phase)
        texture = 0.8 * speckle + 1.0 * stripes
    else:  # smooth internal variation: a dome plus a gentle tilt
        rel = dist / max(r_eq, 1e-6)
        texture = -(rel ** 2) + 0.5 * rel * np.cos(theta - smooth_dir)
    texture = _weighted_standardize(texture, alpha)
    if not erase_candidate:
        img = img + alpha * (contrast + variation * texture)
    img = img + sensor
    tint = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.55, 0.8), rng.uniform(0.75, 0.95)])
    return img, label, mask, tint


def make_lesions(n: int, size: int = 64, seed: int = 0, channels: int = 1, positive_fraction: float = 0.5,
                 erase_candidate: bool = False) -> ImageSet:
    """A procedural two-class set (``benign`` / ``lesion``) whose label depends on one candidate site alone.

    Every image has a tissue-like background (smoothed noise at two scales plus a random low-frequency
    gradient), two to four smooth soft-edged benign blobs at random places with random size and contrast, and
    exactly one crisp-edged *candidate*: in a positive image a lesion with a spiculated outline and a
    speckled, striped interior; in a negative image a smooth round blob with a smooth interior. Both kinds
    draw area, contrast and internal variance from the same distributions (the interior variation is
    standardized to the same weighted mean and std), so brightness, contrast, object count and size carry
    no information about the label. ``masks[i]`` is the candidate's region (the true evidence in positives).

    Image ``i`` depends only on ``(seed, i)`` (its generator is ``np.random.default_rng([seed, i])``), so a
    larger ``n`` extends a smaller one, and every random number is drawn whatever the label, so the
    label changes the candidate's pixels only.

    Args:
        n: number of images.
        size: image side in pixels (square), at least 16.
        seed: the generator seed (>= 0).
        channels: 1 for grey, 3 for an RGB rendering (a random per-image tint of the same grey image).
        positive_fraction: probability that an image is positive (label 1, ``lesion``).
        erase_candidate: render the same images without their candidate (the candidate region shows the
            background and blobs underneath); everything else, labels and masks included, is identical.

    Returns:
        an :class:`ImageSet` with uint8 images, labels, classes ``["benign", "lesion"]``, bool masks and
        ``evidence_class = 1``.

    Raises:
        UsageError: ``n < 0``, ``seed < 0``, ``size < 16``, ``channels`` not 1 or 3, or ``positive_fraction`` outside [0, 1].
    """
    if n < 0 or seed < 0:
        raise UsageError(f"make_lesions needs n >= 0 and seed >= 0, got n={n}, seed={seed}")
    if size < 16:
        raise UsageError(f"make_lesions needs size >= 16, got {size}")
    if channels not in (1, 3):
        raise UsageError(f"make_lesions channels must be 1 or 3, got {channels}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise UsageError(f"make_lesions positive_fraction must lie in [0, 1], got {positive_fraction}")
    shape = (n, size, size) if channels == 1 else (n, size, size, 3)
    images = np.empty(shape, dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        grey, label, mask, tint = _lesion_image(seed, i, size, positive_fraction, erase_candidate)
        pixels = grey if channels == 1 else grey[..., None] * tint
        images[i] = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
        masks[i] = mask
        labels[i] = label
    suffix = "_erased" if erase_candidate else ""
    return ImageSet(images=images, labels=labels, classes=list(LESION_CLASSES),
                    name=f"lesions_{size}{suffix}", masks=masks, evidence_class=1)
