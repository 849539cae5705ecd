"""Entry script of the digits example: the ParallelRunStep MNIST tutorial, offline.

`init()` trains a support vector classifier on the first half of the scikit-learn digits (the
half that `make_data.py` does not write), so no model file is needed; `run()` predicts the
digit of each PNG file of its mini-batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from fleetrun import context

model: SVC | None = None


def init() -> None:
    """Train the model once per runner process."""
    global model
    digits = load_digits()
    half = len(digits.data) // 2
    # gamma=0.001 is scikit-learn's own choice for this data set and split (about 97% accurate).
    model = SVC(gamma=0.001)
    model.fit(digits.data[:half], digits.target[:half])


def features(path: str) -> np.ndarray:
    """The 64 pixel values of an 8x8 grayscale image, scaled back from 0..255 to 0..16."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    if pixels.shape != (8, 8):
        raise ValueError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels, not 8x8")
    return pixels.reshape(64) * (16 / 255)


def run(mini_batch: list[str]) -> list[str]:
    """Return one line, `<file name>: <digit>`, per image of the mini-batch."""
    assert model is not None, "init() has not run"
    if not mini_batch:
        return []
    predictions = model.predict(np.stack([features(path) for path in mini_batch]))
    context.logger.info(f"Scored {len(mini_batch)} images.")
    return [
        f"{Path(path).name}: {int(digit)}"
        for path, digit in zip(mini_batch, predictions, strict=True)
    ]
