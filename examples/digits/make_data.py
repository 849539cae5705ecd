"""Write the test half of the scikit-learn digits as 8x8 grayscale PNG files.

`load_digits()` ships with scikit-learn, so nothing is downloaded. The first half of the
samples trains the model (see `score.py`); the second half, written here, is what fleetrun
scores. The labels go to `labels.csv` next to the data folder, not inside it, because fleetrun
lists every file of its input folder.

    python examples/digits/make_data.py [--out DIR] [--count N] [--labels FILE]
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent


def scored_half() -> tuple[np.ndarray, np.ndarray]:
    """The images (n, 8, 8, values 0..16) and labels of the second half of `load_digits()`."""
    digits = load_digits()
    half = len(digits.images) // 2
    return digits.images[half:], digits.target[half:]


def labels_text(names: list[str], labels: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label"])
    writer.writerows(zip(names, (int(label) for label in labels), strict=True))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "data", help="folder of the PNG files")
    parser.add_argument("--count", type=int, default=None, help="write only the first N images")
    parser.add_argument(
        "--labels", type=Path, default=None, help="labels file (default: labels.csv beside --out)"
    )
    args = parser.parse_args()
    out: Path = args.out.resolve()
    labels_path: Path = (args.labels or out.parent / "labels.csv").resolve()

    images, labels = scored_half()
    if args.count is not None:
        if args.count < 1:
            parser.error("--count must be at least 1")
        images, labels = images[: args.count], labels[: args.count]
    names = [f"digit_{i:05d}.png" for i in range(len(images))]
    expected_labels = labels_text(names, labels)

    existing = set(out.glob("digit_*.png")) if out.is_dir() else set()
    wanted = {out / name for name in names}
    complete = (
        existing == wanted
        and labels_path.is_file()
        and labels_path.read_text(encoding="utf-8") == expected_labels
    )
    if complete:
        print(f"{len(names)} images already in {out}; labels in {labels_path}")
        return

    # The labels file is written last and marks the data as complete: remove it first so that
    # an interrupted run is redone rather than trusted.
    labels_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in existing - wanted:  # fleetrun would score them, and they have no label
        stale.unlink()
    for name, image in zip(names, images, strict=True):
        pixels = np.rint(image * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).save(out / name)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    labels_path.write_text(expected_labels, encoding="utf-8")
    print(f"wrote {len(names)} images to {out}; labels in {labels_path}")


if __name__ == "__main__":
    main()
