"""Where stages.dedupe's pixel threshold comes from: the local difference (largest 3x3-mean gray difference) of
copies of real faces against their originals, and of the closest distinct pairs the pHash nominates.

    PYTHONPATH=. python bench/dedupe_threshold.py [/path/to/anime-faces/faces]

Copies are made of the first 400 faces: JPEG re-encodes at quality 30-75 (same size, and resized to 80-96 px;
an EXIF block sends them through Pillow's decoder) and PNGs resized to 40-90 px. Distinct sets: the 12,000 real
faces as given, 3,000 embedded procedural faces, and 300 handwritten-one-like strokes (tests/test_dedupe.py).
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_dedupe import stroke  # noqa: E402

from stages import faces  # noqa: E402
from stages.dedupe import DEFAULT_MAX_DIFFERENCE, candidate_pairs, local_differences, perceptual_hashes  # noqa: E402
from stages.luma import luma_uint8  # noqa: E402
from stages.sources import read_images, resize_square  # noqa: E402


def copies(files: list[Path], folder: Path, quality: tuple[int, int] | None, sides: tuple[int, int] | None,
           rng: np.random.Generator) -> np.ndarray:
    exif = Image.Exif()
    exif[0x0131] = "copy"
    for index, file in enumerate(files):
        image = Image.open(file).convert("RGB")
        if sides:
            side = int(rng.integers(*sides))
            image = image.resize((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        if quality:
            image.save(buffer, "JPEG", quality=int(rng.integers(*quality)), exif=exif)
        else:
            image.save(buffer, "PNG")
        (folder / f"{index:04d}.{'jpg' if quality else 'png'}").write_bytes(buffer.getvalue())
    return luma_uint8(np.stack([item.pixels for item in read_images(folder, 30, workers=2)]))


def describe(name: str, values: np.ndarray) -> None:
    print(f"{name:58} n={len(values):5}  min {values.min():6.2f}  median {np.median(values):6.2f}  "
          f"p99 {np.percentile(values, 99):6.2f}  max {values.max():6.2f}  <= {DEFAULT_MAX_DIFFERENCE:g}: "
          f"{(values <= DEFAULT_MAX_DIFFERENCE).mean():6.1%}")


def nominated(name: str, gray: np.ndarray) -> None:
    earlier, later = candidate_pairs(perceptual_hashes(gray))
    describe(f"{name}: pHash-nominated pairs", local_differences(gray, earlier, later))


def main() -> None:
    faces_folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/anime-faces/faces")
    rng = np.random.default_rng(0)
    real = {item.name: item.pixels for item in read_images(faces_folder, 30, workers=2) if item.pixels is not None}
    files = sorted(faces_folder.iterdir())[:400]
    originals = luma_uint8(np.stack([real[file.name] for file in files]))
    pairs = np.arange(len(files))
    for label, quality, sides in [("JPEG q30-75, same size", (30, 76), None),
                                  ("JPEG q30-75, resized to 80-96 px", (30, 76), (80, 97)),
                                  ("PNG resized to 40-90 px", None, (40, 91))]:
        with tempfile.TemporaryDirectory() as folder:
            copied = copies(files, Path(folder), quality, sides, rng)
        both = np.concatenate([originals, copied])
        describe(f"copies, {label}", local_differences(both, pairs, pairs + len(files)))
    nominated("12,000 real faces", luma_uint8(np.stack(list(real.values()))))
    nominated("3,000 procedural faces", luma_uint8(np.stack([resize_square(faces.generate_face(i)[0], 30)
                                                             for i in range(3000)])))
    nominated("300 digit strokes", np.stack([stroke(seed) for seed in range(300)]))


if __name__ == "__main__":
    main()
