"""Reports of :class:`crossent.metrics.EvaluationResult`: the table, JSON, atomic files."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import Any, Callable, Iterator

__all__ = ["format_report", "to_json", "atomic_write", "write_json", "atomic_save",
           "publish"]


def publish(tmp: str, path: str) -> None:
    """Rename a finished temporary file over ``path`` with the permissions a new file
    would get (``mkstemp`` creates files readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


def _g(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):.4f}"


def format_report(r: Any, *, max_classes: int = 20) -> str:
    """The human-readable report of an :class:`~crossent.metrics.EvaluationResult`.

    Per-class rows: every class when there are at most ``max_classes``, else the
    ``max_classes`` classes with the highest mean loss.
    """
    lines: list[str] = []
    src = r.sources or {}
    if src.get("predictions"):
        where = src["predictions"]
        lab = src.get("labels")
        lab_col = src.get("label_column")
        if lab and lab != where:
            where += f"  (labels: {lab}" + (f", column {lab_col!r})" if lab_col else ")")
        elif lab_col:
            where += f"  (labels: column {lab_col!r})"
        lines.append(f"crossent eval: {where}")
    inp = r.input
    how = f"assumed: {inp['reason']}" if inp.get("assumed") else "given"
    layout = "one value per example (class 1)" if r.binary else f"{r.n_classes} classes"
    counts = [f"{r.n:,} examples"]
    if r.n_ignored:
        counts.append(f"{r.n_ignored:,} ignored")
    if r.n_nan:
        counts.append(f"{r.n_nan:,} with NaN loss")
    lines.append(f"input          {inp['name']} ({how}); {layout}; {', '.join(counts)}")
    opts = r.options
    extras = []
    if opts.get("weight") is not None:
        extras.append("class weights")
    if opts.get("label_smoothing"):
        extras.append(f"label smoothing {opts['label_smoothing']:g}")
    if opts.get("eps"):
        extras.append(f"eps {opts['eps']:g}")
    if opts.get("ignore_index") is not None:
        extras.append(f"ignore index {opts['ignore_index']}")
    if extras:
        lines.append(f"options        {', '.join(extras)}")
    lines.append("")
    lines.append(f"cross-entropy  {_g(r.cross_entropy, 8)} nats   {_g(r.cross_entropy_bits, 8)} bits"
                 f"   perplexity {_g(r.perplexity, 6)}")
    if r.binary or r.top_k >= r.n_classes:  # top-k accuracy is 1 by definition
        lines.append(f"accuracy       {_pct(r.accuracy)}")
    else:
        lines.append(f"accuracy       {_pct(r.accuracy):<10}     "
                     f"top-{r.top_k} accuracy {_pct(r.top_k_accuracy)}")
    lines.append(f"Brier score    {_g(r.brier, 6):<10}     ECE ({r.n_bins} bins)    {_g(r.ece, 6)}")
    nce_note = ("cross-entropy / entropy of the base rate" if r.binary
                else "cross-entropy / entropy of the label distribution")
    lines.append(f"normalized CE  {_g(r.normalized_cross_entropy, 6):<10}     "
                 f"({nce_note}, {_g(r.label_entropy, 6)} nats)")
    # per class
    pcs = list(r.per_class)
    shown = pcs
    title = f"per class ({len(pcs)})"
    if len(pcs) > max_classes:
        def key(c: dict[str, Any]) -> float:
            v = c["mean_loss"]
            return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        shown = sorted(pcs, key=key, reverse=True)[:max_classes]
        title = f"per class: the {max_classes} of {len(pcs)} with the highest mean loss (--json for all)"
    lines.append("")
    lines.append(title)
    wname = max([5] + [len(str(c["name"])) for c in shown])
    lines.append(f"  {'class':<{wname}}  {'support':>9}  {'mean loss':>11}  {'accuracy':>8}")
    for c in shown:
        lines.append(f"  {str(c['name']):<{wname}}  {c['support']:>9,}  "
                     f"{_g(c['mean_loss'], 6):>11}  {_pct(c['accuracy']):>8}")
    if r.worst:
        lines.append("")
        lines.append(f"worst {len(r.worst)} examples (0-based rows)")
        names = r.class_names
        wl = max([5] + [len(str(names[w['label']])) if names else len(str(w['label'])) for w in r.worst])
        lines.append(f"  {'row':>10}  {'loss':>11}  {'label':<{wl}}  {'predicted':<{max(wl, 9)}}  "
                     f"{'p(label)':>10}")
        for w in r.worst:
            la = names[w["label"]] if names else w["label"]
            pr = names[w["predicted"]] if names else w["predicted"]
            lines.append(f"  {w['row']:>10}  {_g(w['loss'], 6):>11}  {str(la):<{wl}}  "
                         f"{str(pr):<{max(wl, 9)}}  {_g(w['p_label'], 4):>10}")
    return "\n".join(lines)


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (no NaN/Infinity literals: the result's ``to_dict`` spells them)."""
    return json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[Any]:
    """Write ``path`` all at once: into a temporary file beside it, renamed over ``path``
    when the block succeeds, removed when it fails (no partial file is ever visible)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    suffix = os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffix}", dir=d)
    try:
        enc: dict[str, Any] = {} if "b" in mode else {"encoding": "utf-8"}
        with os.fdopen(fd, mode, **enc) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    with atomic_write(path) as f:
        f.write(to_json(obj))
        f.write("\n")


def atomic_save(path: str, save: Callable[[str], None]) -> None:
    """``save(tmp_path)`` then rename to ``path`` (for writers that want a file name)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    suffix = os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffix}", dir=d)
    os.close(fd)
    try:
        save(tmp)
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
