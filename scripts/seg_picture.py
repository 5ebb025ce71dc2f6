"""The README's DICOM SEG picture: a CT slice at the mediastinal and the lung window, the evidence read back from
the DICOM SEG that `medcam-fast explain` wrote (highdicom) outlined in red.

    python scripts/seg_picture.py SOURCE.dcm OUT/NAME_seg.dcm docs/medical_seg.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image

from medcam_fast.cli.writers import outline
from medcam_fast.data.images import decode
from medcam_fast.data.medical import parse_window


def main(source: Path, seg_path: Path, out: Path) -> None:
    uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    seg = hd.seg.segread(seg_path)
    mask = seg.get_pixels_by_source_instance([uid], segment_numbers=[1])[0, ..., 0] > 0
    edge = outline(mask)
    panels = []
    for name in ("mediastinum", "lung"):
        grey = (decode(source, window=parse_window(name)).pixels * 255 + 0.5).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        rgb[edge] = (255, 40, 40)
        panels.append(rgb)
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    picture = Image.fromarray(np.concatenate([panels[0], gap, panels[1]], axis=1))
    picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.LANCZOS).save(out, optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
