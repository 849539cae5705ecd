"""Entry script of the iris example: the ParallelRunStep tabular (iris) tutorial, offline.

`init()` trains a small classifier on scikit-learn's bundled iris (150 rows), so no model file
is needed; `run(df)` gets a pandas DataFrame (a slice of the CSV inputs) and returns one row per
input row: the predicted species and its probability. `keep_columns: [id]` in job.yaml puts
each input row's id in front of its output row.
"""

from __future__ import annotations

import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from fleetrun import context

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
model: LogisticRegression | None = None
species: list[str] = []


def init() -> None:
    """Train the model once per runner process."""
    global model, species
    iris = load_iris()
    model = LogisticRegression(max_iter=1000)
    model.fit(iris.data, iris.target)
    species = [str(name) for name in iris.target_names]


def run(df: pd.DataFrame) -> pd.DataFrame:
    """The predicted species of every row of the mini-batch, in the order of the rows."""
    assert model is not None, "init() has not run"
    probabilities = model.predict_proba(df[FEATURES].to_numpy())
    best = probabilities.argmax(axis=1)
    context.logger.info(f"Scored {len(df)} rows.")
    return pd.DataFrame(
        {
            "predicted_species": [species[i] for i in best],
            "probability": probabilities.max(axis=1).round(4),
        }
    )
