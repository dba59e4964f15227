"""Make the predictions file that ``crossent eval --example digits`` scores.

A real model on a dataset that ships with scikit-learn: a multinomial logistic regression
on the 8x8 digits (1797 images, 10 classes), trained on 75% of them (stratified, seed 0);
its predicted probabilities on the other 450 are written, with the true labels, to
``src/crossent/data/digits_logreg.csv`` (columns ``0`` ... ``9``: the probability of each
digit, then ``label``), every probability with 17 significant digits so that the file
reproduces the model's float64 output exactly. The textbook example
(``src/crossent/data/textbook.csv``) is written too.

    pip install scikit-learn
    python examples/make_digits_predictions.py [--out-dir src/crossent/data]

It prints scikit-learn's ``log_loss`` and accuracy for comparison with
``crossent eval --example digits``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, probs: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*names, "label"])
        for p, y in zip(probs, labels):
            w.writerow([repr(float(v)) for v in p] + [int(y)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "src" / "crossent" / "data")
    args = ap.parse_args()

    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=5000))
    model.fit(x_train, y_train)
    probs = model.predict_proba(x_test)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(args.out_dir / "digits_logreg.csv", probs, y_test, [str(c) for c in range(10)])
    textbook = np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]])
    write_csv(args.out_dir / "textbook.csv", textbook, np.array([0, 2]), ["0", "1", "2"])
    print(f"wrote {args.out_dir / 'digits_logreg.csv'}: {len(y_test)} test examples")
    print(f"scikit-learn log_loss {log_loss(y_test, probs):.10f}  "
          f"accuracy {accuracy_score(y_test, probs.argmax(1)):.4f}")


if __name__ == "__main__":
    main()
