"""``crossent eval``: the command line of the evaluator (a thin layer over
:mod:`crossent.metrics`).

Exit status: 0 on success, 1 for bad input (a missing, unreadable or corrupt file, a bad
cell, mismatched row counts, an out-of-range label ...), 2 for usage errors (unknown
options, conflicting or out-of-range option values). Errors are one line on stderr naming
the file, the row and column, and what was expected; no output file is written unless the
whole evaluation succeeds (outputs are written to temporary files and renamed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
from typing import Any, Iterator, Sequence

from .._errors import CrossEntropyError, InvalidOptionError
from .errors import DataFileError, require

__all__ = ["add_parser", "build_parser", "run", "main", "EXAMPLES"]

EXAMPLES = {
    "textbook": "textbook.csv",
    "digits": "digits_logreg.csv",
}

DESCRIPTION = """\
Score a classifier's predictions against labels: mean cross-entropy (nats, bits,
perplexity), accuracy and top-k accuracy, Brier score, expected calibration error,
normalized cross-entropy, a per-class table and the worst examples. Files of any size are
streamed in chunks with bounded memory.
"""

EPILOG = """\
formats: .npy, .npz, .csv/.tsv (also .gz), Parquet and Arrow/Feather files, and
directories of Parquet or Arrow part files. Predictions are one column per class, one list
column (Parquet/Arrow), a 2-D array, or one value per example (binary: probability or
logit of the positive class). Labels are class indices or class names.

examples:
  crossent eval --example
  crossent eval preds.npy --labels labels.npy --input logits
  crossent eval preds.csv --label-col label --json
  crossent eval part-dir/ --label-col y --pred-cols logits --dask local:4
  crossent eval preds.parquet --labels y.csv --classes cat,dog,bird --plot report.png

exit status: 0 success, 1 bad input (file, cell, label, row count), 2 usage error.
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="score a predictions file against labels",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossent eval", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError("NaN is not allowed")
    return v


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", nargs="?", metavar="PREDICTIONS",
                   help="predictions file or directory of part files")
    src = p.add_argument_group("input")
    src.add_argument("--labels", metavar="FILE",
                     help="labels file (default: a label column of the predictions file)")
    src.add_argument("--label-col", metavar="COL",
                     help="label column (name or 0-based index) of the file holding the labels "
                          "(default: a column named label/labels/target/y/...); for .npz, "
                          "the array name")
    src.add_argument("--pred-cols", metavar="COLS",
                     help="prediction columns: comma-separated names, indices, ranges "
                          "(2:12) or globs (p_*); one list column; for .npz the array name "
                          "(default: every column but the label column)")
    src.add_argument("--classes", metavar="NAMES",
                     help="class names, comma-separated or @FILE (one per line), for labels "
                          "given as names (binary: negative class first)")
    src.add_argument("--format", choices=["npy", "npz", "csv", "tsv", "parquet", "arrow"],
                     help="format of PREDICTIONS (default: from the name or content)")
    src.add_argument("--labels-format", choices=["npy", "npz", "csv", "tsv", "parquet", "arrow"],
                     help="format of --labels (default: from the name or content)")
    src.add_argument("--delimiter", metavar="CHAR",
                     help="CSV delimiter (default: ',' for .csv, tab for .tsv)")
    hdr = src.add_mutually_exclusive_group()
    hdr.add_argument("--no-header", dest="header", action="store_false", default=None,
                     help="CSV files have no header row (columns are 0, 1, 2, ...); by "
                          "default a first row of numbers only is data when it has one "
                          "column or a non-integer")
    hdr.add_argument("--header", dest="header", action="store_true",
                     help="CSV files have a header row, even if it is all numbers")
    src.add_argument("--input", choices=["auto", "probs", "logits", "log-probs"],
                     default="auto",
                     help="what the predictions are (default: auto, detected from the first "
                          "rows and stated in the report)")
    src.add_argument("--example", nargs="?", const="all", choices=["all", *EXAMPLES],
                     help="score a predictions set shipped with crossent instead of a file: "
                          "the textbook two-example case and a logistic regression on "
                          "scikit-learn's digits (default: both)")
    loss = p.add_argument_group("loss (the library's semantics)")
    loss.add_argument("--weight", metavar="W,W,...",
                      help="per-class weights (>= 0), one per class")
    loss.add_argument("--ignore-index", type=int, metavar="N",
                      help="label value of examples to skip")
    loss.add_argument("--label-smoothing", type=_float, default=0.0, metavar="EPS",
                      help="label smoothing in [0, 1] (default 0)")
    loss.add_argument("--eps", type=_float, default=0.0, metavar="EPS",
                      help="clip probabilities to [eps, 1 - eps] (default 0: exact)")
    loss.add_argument("--sum-tol", type=_float, default=1e-2, metavar="TOL",
                      help="tolerance on the row sums of probabilities (default 0.01)")
    rep = p.add_argument_group("report")
    rep.add_argument("--top-k", type=_positive_int, default=5, metavar="K",
                     help="k of the top-k accuracy (default 5)")
    rep.add_argument("--bins", type=_positive_int, default=15, metavar="N",
                     help="confidence bins of the calibration error (default 15)")
    rep.add_argument("--worst", type=_nonneg_int, default=10, metavar="K",
                     help="how many of the worst examples to list (default 10)")
    rep.add_argument("--max-classes", type=_positive_int, default=20, metavar="N",
                     help="per-class rows in the table (default 20; JSON has all)")
    rep.add_argument("--json", action="store_true",
                     help="print one JSON object on stdout instead of the table")
    rep.add_argument("--output", "-o", metavar="FILE",
                     help="also write the JSON report to FILE (atomically)")
    rep.add_argument("--plot", metavar="FILE",
                     help="draw a reliability diagram, the loss histogram and per-class "
                          "losses into FILE (.png, .svg or .pdf; needs crossent[plot])")
    run = p.add_argument_group("running")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar (it is shown on stderr when stderr is a terminal)")
    run.add_argument("--chunk-mb", type=_positive_int, default=16, metavar="MB",
                     help="read this many MB of predictions at a time (default 16)")
    run.add_argument("--threads", type=_positive_int, metavar="N",
                     help="threads for scoring (default: crossent.get_num_threads())")
    run.add_argument("--dask", metavar="ADDRESS",
                     help="run on the Dask cluster at ADDRESS (tcp://host:8786), or start a "
                          "local one with local:N workers (needs crossent[dask])")
    run.add_argument("--partitions", type=_positive_int, metavar="N",
                     help="with --dask: about this many partitions (default: by size)")


class UsageError(Exception):
    """A bad combination of options (exit status 2)."""


def _parse_list(text: str, what: str) -> list[str]:
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as f:
                items = [ln.strip() for ln in f if ln.strip()]
        except OSError as exc:
            raise DataFileError(f"cannot read the {what} file: {exc.strerror or exc}",
                                file=path) from exc
    else:
        items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise UsageError(f"--{what}: empty name in {text!r}")
    if len(set(items)) != len(items):
        raise UsageError(f"--{what}: a name appears twice in {text!r}")
    return items


def _example_path(name: str) -> str:
    from importlib import resources

    ref = resources.files("crossent").joinpath("data", EXAMPLES[name])
    path = str(ref)
    if not os.path.exists(path):  # pragma: no cover - zipped installs
        raise DataFileError("the example file is missing from the installation", file=path)
    return path


def _options(args: argparse.Namespace) -> dict[str, Any]:
    weight = None
    if args.weight is not None:
        try:
            weight = [float(t) for t in args.weight.split(",")]
        except ValueError:
            raise UsageError(f"--weight {args.weight!r}: expected numbers separated by commas") from None
    return dict(weight=weight, ignore_index=args.ignore_index,
                label_smoothing=args.label_smoothing, eps=args.eps, top_k=args.top_k,
                n_bins=args.bins, worst=args.worst, sum_tol=args.sum_tol)


def _check_usage(args: argparse.Namespace) -> None:
    if args.example and args.predictions:
        raise UsageError("give either PREDICTIONS or --example, not both")
    if not args.example and not args.predictions:
        raise UsageError("the PREDICTIONS file is required (or --example)")
    if args.example and (args.labels or args.pred_cols or args.label_col):
        raise UsageError("--example uses the shipped files: no --labels/--pred-cols/--label-col")
    if args.plot:
        ext = os.path.splitext(args.plot)[1].lower()
        if ext not in (".png", ".svg", ".pdf"):
            raise UsageError(f"--plot {args.plot!r}: the file name must end in .png, .svg or .pdf")
        if args.example == "all":
            raise UsageError("--plot draws one evaluation: choose --example textbook or "
                             "--example digits")
    if args.partitions and not args.dask:
        raise UsageError("--partitions needs --dask")
    if args.delimiter == "\\t":
        args.delimiter = "\t"
    if args.delimiter is not None and len(args.delimiter) != 1:
        raise UsageError(f"--delimiter {args.delimiter!r}: expected one character")
    for opt in ("output", "plot"):
        path = getattr(args, opt)
        if path:
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise DataFileError(f"--{opt}: the directory {d!r} does not exist", file=path)
            if os.path.isdir(path):
                raise DataFileError(f"--{opt}: is a directory", file=path)


def _evaluate(args: argparse.Namespace, predictions: str, labels: str | None,
              classes: list[str] | None, options: dict[str, Any]) -> Any:
    from .job import Source, plan, progress_for
    from .readers import parse_columns

    cols = parse_columns(args.pred_cols)
    pred_cols = tuple(cols) if cols else None
    header = args.header
    src = Source(predictions, fmt=args.format, delimiter=args.delimiter, header=header,
                 pred_cols=pred_cols, label_col=None if labels else args.label_col)
    lab = None
    if labels:
        lab = Source(labels, fmt=args.labels_format, delimiter=args.delimiter, header=header,
                     label_col=args.label_col)
    p = plan(src, lab, input=args.input, classes=classes, options=options,
             chunk_bytes=args.chunk_mb << 20)
    p.threads = args.threads
    progress = progress_for(p, not args.no_progress)
    try:
        if args.dask:
            from .dask import run_on_dask

            ev = run_on_dask(p, args.dask, progress, partitions=args.partitions)
        else:
            ev = p.score(progress=progress)
    finally:
        progress.close()
    result = ev.result()
    result.sources = p.sources()
    return result


@contextlib.contextmanager
def _staged(paths: Sequence[str | None]) -> Iterator[list[str | None]]:
    """Temporary paths beside each output; renamed over the outputs together on success,
    removed on failure."""
    tmps: list[str | None] = []
    try:
        for out in paths:
            if not out:
                tmps.append(None)
                continue
            d = os.path.dirname(os.path.abspath(out))
            base = os.path.basename(out)
            fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{os.path.splitext(base)[1]}",
                                       dir=d)
            os.close(fd)
            tmps.append(tmp)
        yield tmps
        from .report import publish

        for final, staged in zip(paths, tmps):
            if final and staged:
                publish(staged, final)
    finally:
        for left in tmps:
            if left and os.path.exists(left):
                with contextlib.suppress(OSError):
                    os.unlink(left)


def run(args: argparse.Namespace) -> int:
    """Run ``crossent eval`` with parsed arguments; returns the exit status."""
    from .report import format_report, to_json

    _check_usage(args)
    if args.plot:
        require("matplotlib", "--plot")
    if args.dask:
        require("distributed", "--dask")
    if args.threads:
        from .._kernels import set_num_threads

        set_num_threads(args.threads)
    options = _options(args)
    classes = _parse_list(args.classes, "classes") if args.classes else None
    runs: list[tuple[str | None, str, str | None, list[str] | None]] = []
    predictions: str = args.predictions or ""
    if args.example:
        names = list(EXAMPLES) if args.example == "all" else [args.example]
        for name in names:
            runs.append((name, _example_path(name), None, classes))
    else:
        runs.append((None, predictions, args.labels, classes))
    results = []
    for name, pred, lab, cls in runs:
        r = _evaluate(args, pred, lab, cls, options)
        if name:
            r.sources = dict(r.sources, example=name)
        results.append((name, r))
    if len(results) == 1:
        doc: Any = results[0][1].to_dict()
    else:
        doc = {name: r.to_dict() for name, r in results}
    text = to_json(doc)
    with _staged([args.output, args.plot]) as (out_tmp, plot_tmp):
        if plot_tmp:
            title = os.path.basename(results[0][1].sources.get("predictions", ""))
            _plot_to(plot_tmp, results[0][1], args.plot, title)
        if out_tmp:
            with open(out_tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
    if args.json:
        sys.stdout.write(text + "\n")
    else:
        blocks = []
        for name, r in results:
            head = f"== example: {name} ==\n" if len(results) > 1 else ""
            blocks.append(head + format_report(r, max_classes=args.max_classes))
        sys.stdout.write("\n\n".join(blocks) + "\n")
    sys.stdout.flush()
    return 0


def _plot_to(tmp: str, result: Any, final: str, title: str) -> None:
    """Draw into the staged temporary file (same extension as ``final``)."""
    from .plot import plot_result

    assert tmp.endswith(os.path.splitext(final)[1])
    plot_result(result, tmp, title=title)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None, prog: str = "crossent eval") -> int:
    """``crossent eval`` as a function: parse ``argv``, run, return the exit status."""
    parser = build_parser()
    parser.prog = prog
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    return run_guarded(args, prog)


def run_guarded(args: argparse.Namespace, prog: str = "crossent eval") -> int:
    """:func:`run`, with errors turned into one line on stderr and the exit status."""
    try:
        return run(args)
    except UsageError as e:
        sys.stderr.write(f"{prog}: error: {_one_line(e)}\n")
        return 2
    except InvalidOptionError as e:
        opt = f"--{e.argument.replace('_', '-')}: " if isinstance(e.argument, str) else ""
        sys.stderr.write(f"{prog}: error: {opt}{_one_line(e)}\n")
        return 2
    except CrossEntropyError as e:
        sys.stderr.write(f"{prog}: error: {_one_line(e)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write(f"{prog}: error: out of memory (try a smaller --chunk-mb)\n")
        return 1
    except BrokenPipeError:  # stdout closed early (| head)
        with contextlib.suppress(Exception):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 1
