"""``python -m crossent`` / ``crossent``: the command line.

- ``crossent`` (no subcommand) or ``crossent demo``: the textbook example and its logits
  counterpart;
- ``crossent eval PREDICTIONS [--labels LABELS] [options]``: score a predictions file
  (see ``crossent eval --help``; ``crossent eval --example`` scores the shipped examples).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from . import __version__, cross_entropy, softmax_cross_entropy


def demo() -> str:
    """The textbook example, computed from probabilities and from logits."""
    y_hat = np.array([[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]])
    y = np.array([0, 2])
    logits = np.log(y_hat) + np.array([[3.0], [-1.0]])  # any per-row shift: same softmax
    with np.printoptions(precision=8, suppress=True):
        lines = [
            f"crossent {__version__}: cross-entropy, exact, for any array library",
            "",
            "Textbook: the loss of example i is -log y_hat[i, y_i]",
            f"  y_hat = {np.array2string(y_hat, separator=', ', prefix='  y_hat = ')}",
            f"  y     = {np.array2string(y, separator=', ')}",
            f"  crossent.cross_entropy(y_hat, y)          -> {cross_entropy(y_hat, y)}",
            "",
            "From logits (what a model outputs; stable log-sum-exp, never log(softmax))",
            f"  logits = {np.array2string(logits, separator=', ', prefix='  logits = ')}",
            f"  crossent.softmax_cross_entropy(logits, y) -> {softmax_cross_entropy(logits, y)}",
            f"  reduction='mean'                          -> "
            f"{float(softmax_cross_entropy(logits, y, reduction='mean')):.8f}",
            f"  label_smoothing=0.1                       -> "
            f"{softmax_cross_entropy(logits, y, label_smoothing=0.1)}",
            "",
            "Score a predictions file: crossent eval PREDICTIONS --labels LABELS "
            "(try: crossent eval --example)",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``crossent`` parser: subcommands ``eval`` and ``demo`` (the default)."""
    from ._eval import cli

    parser = argparse.ArgumentParser(
        prog="crossent", description="Cross-entropy loss, exact, for any array library.",
        epilog="Run without a command to see the textbook example.",
    )
    parser.add_argument("--version", action="version", version=f"crossent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="the textbook example (the default)")
    cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 bad input, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error (2)
        return int(e.code or 0)
    if args.command == "eval":
        from ._eval import cli

        return cli.run_guarded(args, "crossent eval")
    print(demo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
