"""Check the output of the digits example against the true labels.

Prints where the output is, the job summary, and the accuracy: the fraction of output lines
whose predicted digit is the true label. Exits 1 when the job did not succeed or the accuracy
is below the threshold.

    python examples/digits/check_accuracy.py OUT_DIR [--labels FILE] [--min-accuracy 0.85]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_labels(path: Path) -> dict[str, int]:
    with path.open(newline="", encoding="utf-8") as file:
        return {row["file"]: int(row["label"]) for row in csv.DictReader(file)}


def read_predictions(path: Path) -> list[tuple[str, int]]:
    """The `(file name, digit)` pairs of lines such as `digit_00012.png: 7`."""
    predictions = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, _, digit = line.rpartition(":")
            predictions.append((name.strip(), int(digit)))
    return predictions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="the job's output folder")
    parser.add_argument("--labels", type=Path, default=HERE / "labels.csv")
    parser.add_argument("--file", default="predictions.txt", help="the append_row file name")
    parser.add_argument("--min-accuracy", type=float, default=0.85)
    args = parser.parse_args()
    out_dir: Path = args.out_dir.resolve()

    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        print(f"error: no summary in {out_dir}: has the job run?", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    output_path = out_dir / args.file
    print(f"output: {output_path}")
    print(f"summary ({summary_path}):")
    print(json.dumps(summary, indent=2))

    ok = True
    if summary.get("status") != "succeeded":
        print(f"error: the job's status is {summary.get('status')!r}, not 'succeeded'")
        ok = False
    if not output_path.is_file():
        print(f"error: the output file {output_path} does not exist")
        return 1

    labels = read_labels(args.labels)
    predictions = read_predictions(output_path)
    if not predictions:
        print("error: the output file has no predictions")
        return 1
    correct = sum(labels.get(name) == digit for name, digit in predictions)
    accuracy = correct / len(predictions)
    print(f"accuracy: {accuracy:.3f} on {len(predictions)} images")

    unlabelled = sorted({name for name, _ in predictions} - labels.keys())
    if unlabelled:
        print(f"warning: {len(unlabelled)} predicted files have no label, e.g. {unlabelled[0]}")
    unscored = len(labels.keys() - {name for name, _ in predictions})
    if unscored:
        print(f"warning: {unscored} of the {len(labels)} labelled images have no prediction")
    if accuracy < args.min_accuracy:
        print(f"error: the accuracy is below {args.min_accuracy}")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
