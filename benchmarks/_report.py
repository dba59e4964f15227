"""Result rows -> CSV, and CSV rows -> the markdown report (so a CSV can be re-rendered)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

CSV_COLUMNS = [
    # the run
    "date", "git_commit", "command", "run", "run_wall_s", "run_load_start", "run_load_end",
    "repeats_max", "min_repeats", "budget_s", "timing", "isolate",
    # the machine and the software
    "cpu_model", "logical_cpus", "physical_cores", "usable_cpus", "platform", "thp",
    "python", "numpy", "scipy", "ml_dtypes", "torch", "jax", "jaxlib", "optax", "crossent",
    "crossent_isa", "crossent_kernels", "torch_cpu_capability",
    # threads
    "threads", "torch_threads", "torch_interop_threads", "crossent_threads", "xla_flags",
    "affinity",
    # the group
    "mode", "n", "c", "dtype", "input_bytes", "load1_start", "load1_end",
    # the row
    "impl", "kind", "label", "repeats", "median_s", "p20_s", "p80_s", "min_s",
    "ratio_fastest", "ratio_limit", "limit_ref", "limit_gbps", "cpu_util", "cpu_pressure",
    "peak_extra_bytes", "peak_extra_x_input", "acc_loss", "acc_grad", "setup_s",
    "first_call_s", "note", "error",
]
_INT = {"logical_cpus", "physical_cores", "usable_cpus", "repeats_max", "min_repeats",
        "threads", "torch_threads", "torch_interop_threads", "crossent_threads", "n", "c",
        "input_bytes", "repeats", "peak_extra_bytes"}
_FLOAT = {"run_wall_s", "budget_s", "load1_start", "load1_end", "median_s", "p20_s", "p80_s",
          "min_s", "ratio_fastest", "ratio_limit", "limit_gbps", "cpu_util", "cpu_pressure",
          "peak_extra_x_input", "acc_loss", "acc_grad", "setup_s", "first_call_s"}

MODE_TITLES = {
    "fwd": "Forward: per-example loss (reduction=\"none\", integer labels)",
    "grad": "Loss + gradient (reduction=\"mean\", integer labels)",
}
LIMIT_REF = {"fwd": "read", "grad": "read+write"}
LIMIT_LABEL = {"read": "read pass", "read+write": "read + write pass",
               "alloc+write": "alloc + write (fresh pages)"}


# --------------------------------------------------------------------------- rows

def add_ratios(groups: list[dict]) -> None:
    """Per group: ratio to the fastest implementation and to the limit pass; GB/s."""
    for g in groups:
        rows = g.get("rows", [])
        mode = g["group"]["mode"]
        ref_name = LIMIT_REF[mode]
        impl_medians = [r["median_s"] for r in rows if r["kind"] == "impl" and r["median_s"]]
        fastest = min(impl_medians) if impl_medians else None
        ref = next((r["median_s"] for r in rows if r["impl"] == ref_name and r["median_s"]),
                   None)
        moved = g["input_bytes"] * (1 if mode == "fwd" else 2)
        for r in rows:
            m = r["median_s"]
            r["ratio_fastest"] = m / fastest if m and fastest and r["kind"] == "impl" else None
            r["ratio_limit"] = m / ref if m and ref else None
            r["limit_ref"] = ref_name
            r["limit_gbps"] = moved / m / 1e9 if m and r["kind"] == "limit" else None
            pb = r.get("peak_extra_bytes")
            r["peak_extra_x_input"] = pb / g["input_bytes"] if pb is not None else None


def flat_rows(groups: list[dict], meta: dict) -> list[dict]:
    out = []
    for g in groups:
        grp = g["group"]
        base = dict(meta)
        base.update(mode=grp["mode"], n=grp["n"], c=grp["c"], dtype=grp["dtype"],
                    input_bytes=g.get("input_bytes"), load1_start=g.get("load1_start"),
                    load1_end=g.get("load1_end"))
        if "error" in g:
            out.append({**base, "impl": "*", "kind": "group", "error": g["error"]})
            continue
        for r in g["rows"]:
            out.append({**base, **{k: r.get(k) for k in CSV_COLUMNS if k in r}})
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in CSV_COLUMNS})


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return " ".join(str(i) for i in v)
    return v


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV written by :func:`write_csv`, with numbers as numbers."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            r: dict = {}
            for k, v in raw.items():
                if v in ("", None):
                    r[k] = None if (k in _INT or k in _FLOAT) else (v or "")
                elif k in _INT:
                    r[k] = int(float(v))
                elif k in _FLOAT:
                    r[k] = float(v)
                else:
                    r[k] = v
            for k in CSV_COLUMNS:  # a CSV from an older version of this harness
                r.setdefault(k, None if (k in _INT or k in _FLOAT) else "")
            rows.append(r)
    return rows


# --------------------------------------------------------------------------- formatting

def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.2f} s"


def _fmt_ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _fmt_mem(b: int | None, x: float | None) -> str:
    if b is None:
        return "—"
    mib = b / 2**20
    s = f"{mib:,.0f} MiB" if mib >= 10 else f"{mib:.1f} MiB"
    return f"{s} ({x:.2f}×)" if x is not None else s


def _fmt_err(v: float | None) -> str:
    return "" if v is None else f"{v:.1e}"


def _groups(rows: list[dict]) -> list[tuple[tuple, list[dict]]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["mode"], r["n"], r["c"], r["dtype"]), []).append(r)
    return list(out.items())


# --------------------------------------------------------------------------- markdown

def _header(r0: dict) -> list[str]:
    return [
        f"# crossent benchmarks — {r0['date']}",
        "",
        f"- run: `{r0['command']}` ({r0['run']}; {(r0['run_wall_s'] or 0) / 60:.1f} min "
        f"wall), commit `{r0['git_commit'] or 'unknown'}`",
        f"- machine: {r0['cpu_model']}, {r0['logical_cpus']} logical CPUs"
        + (f" ({r0['physical_cores']} cores listed)" if r0["physical_cores"] else "")
        + f", {r0['usable_cpus']} usable; {r0['platform']}; THP `{r0['thp']}`",
        f"- threads: **{r0['threads']} for everyone**: torch.set_num_threads"
        f"({r0['torch_threads'] or '—'}) (interop {r0['torch_interop_threads'] or '—'}), "
        f"crossent.set_num_threads({r0['crossent_threads'] or '—'}), XLA: process pinned to "
        f"CPUs [{r0['affinity']}] (XLA sizes its thread pool from the affinity; XLA_FLAGS "
        f"`{r0['xla_flags'] or 'unset'}`), OMP/MKL/OPENBLAS_NUM_THREADS={r0['threads']}; "
        "NumPy/SciPy element-wise work is single-threaded by design",
        "- versions: python " + r0["python"] + ", " + ", ".join(
            f"{k} {r0.get(k) or '—'}" for k in ("numpy", "scipy", "ml_dtypes", "torch", "jax",
                                                "jaxlib", "optax", "crossent"))
        + f"; crossent kernels {r0['crossent_kernels'] or '?'}, ISA "
        f"{r0['crossent_isa'] or '—'}; torch CPU capability {r0['torch_cpu_capability'] or '—'}",
        f"- load average (1/5/15 min): {r0['run_load_start']} at the start, "
        f"{r0['run_load_end']} at the end, on {r0['usable_cpus']} CPUs (this benchmark "
        f"itself accounts for up to {r0['threads']}; more means other processes competed for "
        "the CPUs and the timings are noisy: see the cpu and wait columns)",
        f"- timing: up to {r0['repeats_max']} timed calls per row (at least "
        f"{r0['min_repeats']}; fewer past {r0['budget_s'] if r0['budget_s'] is not None else '?'} s), "
        f"{r0['timing'] or '?'}, {r0['isolate'] or '?'}",
    ]


def _summary(groups) -> list[str]:
    lines = ["", "## Summary: crossent vs the fastest peer", "",
             "| mode | N×C | dtype | crossent | × limit | out= buffer (× read + write) | "
             "fastest peer | its median | crossent ÷ peer | crossent peak extra | "
             "torch eager peak extra |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mode, n, c, dtype), rows in groups:
        ce = next((r for r in rows if r["impl"] == "crossent" and r["median_s"]), None)
        co = next((r for r in rows if r["impl"] == "crossent.out" and r["median_s"]), None)
        peers = [r for r in rows if r["kind"] == "impl" and not r["impl"].startswith("crossent")
                 and r["median_s"]]
        if ce is None:
            continue
        best = min(peers, key=lambda r: r["median_s"]) if peers else None
        te = next((r for r in rows if r["impl"] == "torch" and r["median_s"]), None)
        ratio = ce["median_s"] / best["median_s"] if best else None
        lines.append(
            f"| {mode} | {n}×{c} | {dtype} | {fmt_time(ce['median_s'])} | "
            f"{_fmt_ratio(ce['ratio_limit'])} | "
            + (f"{fmt_time(co['median_s'])} ({_fmt_ratio(co['ratio_limit'])})" if co else "—")
            + f" | {best['impl'] if best else '—'} | "
            f"{fmt_time(best['median_s']) if best else '—'} | "
            + (f"**{ratio:.2f}**" if ratio is not None and ratio > 1 else _fmt_ratio(ratio))
            + f" | {_fmt_mem(ce['peak_extra_bytes'], ce['peak_extra_x_input'])} | "
            f"{_fmt_mem(te['peak_extra_bytes'], te['peak_extra_x_input']) if te else '—'} |")
    lines.append("")
    lines.append("crossent ÷ peer > 1 (bold) means a peer was faster. × limit: crossent's "
                 "median over the read pass (forward) or the read + write pass (loss + "
                 "gradient) measured in the same process. The read + write pass writes into "
                 "resident pages; a call that returns a fresh gradient also pays the page "
                 "faults of the new array (the alloc + write pass in the detailed table), "
                 "which `out=` avoids: the out= column is the loss + gradient written into a "
                 "buffer reused from call to call.")
    return lines


def _torch_summary(groups) -> list[str]:
    """crossent.torch.cross_entropy against the function it replaces, PyTorch eager's
    F.cross_entropy, on the same tensors (only where both ran)."""
    lines = ["", "## crossent.torch vs PyTorch eager (the drop-in on tensors)", "",
             "| mode | N×C | dtype | crossent.torch | torch eager | crossent.torch ÷ torch |",
             "|---|---|---|---|---|---|"]
    n0 = len(lines)
    for (mode, n, c, dtype), rows in groups:
        ct = next((r for r in rows if r["impl"] == "crossent.torch" and r["median_s"]), None)
        te = next((r for r in rows if r["impl"] == "torch" and r["median_s"]), None)
        if ct is None or te is None:
            continue
        ratio = ct["median_s"] / te["median_s"]
        lines.append(f"| {mode} | {n}×{c} | {dtype} | {fmt_time(ct['median_s'])} | "
                     f"{fmt_time(te['median_s'])} | "
                     + (f"**{ratio:.2f}**" if ratio > 1 else _fmt_ratio(ratio)) + " |")
    if len(lines) == n0:
        return []
    lines += ["", "fwd: `reduction=\"none\"`; grad: the mean loss and `torch.autograd.grad` "
              "for both. > 1 (bold): PyTorch eager was faster."]
    return lines


def markdown(rows: list[dict], notes: list[str]) -> str:
    groups = _groups(rows)
    lines = _header(rows[0]) if rows else ["# crossent benchmarks", "", "(no results)"]
    lines += _summary(groups)
    lines += _torch_summary(groups)
    for mode in ("fwd", "grad"):
        mg = [(k, rs) for k, rs in groups if k[0] == mode]
        if not mg:
            continue
        ref = LIMIT_REF[mode]
        lines += ["", f"## {MODE_TITLES[mode]}", ""]
        err_col = "max abs err" if mode == "fwd" else "err mean / N·grad"
        lines.append(f"| N×C | dtype | implementation | median | p20–p80 | × fastest | "
                     f"× {LIMIT_LABEL[ref]} | cpu | wait | peak extra (× input) | {err_col} |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for (_, n, c, dtype), rs in mg:
            size = f"{n}×{c}"
            first = True
            for r in rs:
                lead = [size, dtype] if first else ["", ""]
                first = False
                if r["kind"] == "group":
                    lines.append("| " + " | ".join(lead + [f"**group failed**: {r['error']}"]
                                                   + [""] * 8) + " |")
                    continue
                name = r["impl"]
                if r["kind"] == "limit":
                    name = f"*{LIMIT_LABEL.get(name, name)}*"
                fastest = r["ratio_fastest"] is not None and abs(r["ratio_fastest"] - 1) < 1e-9
                med = fmt_time(r["median_s"])
                if fastest:
                    med, name = f"**{med}**", f"**{name}**"
                if r["error"]:
                    cells = [name, f"failed: {r['error'][:120]}"] + [""] * 7
                else:
                    spread = f"{fmt_time(r['p20_s'])}–{fmt_time(r['p80_s'])}"
                    if mode == "fwd":
                        err = _fmt_err(r["acc_loss"])
                    else:
                        err = (f"{_fmt_err(r['acc_loss'])} / {_fmt_err(r['acc_grad'])}"
                               if r["acc_loss"] is not None else "")
                    cpu = "" if r["cpu_util"] is None else f"{r['cpu_util']:.1f}"
                    wait = ("" if r["cpu_pressure"] is None
                            else f"{min(r['cpu_pressure'], 1.0):.0%}")
                    cells = [name, med, spread, _fmt_ratio(r["ratio_fastest"]),
                             _fmt_ratio(r["ratio_limit"]), cpu, wait,
                             _fmt_mem(r["peak_extra_bytes"], r["peak_extra_x_input"]), err]
                lines.append("| " + " | ".join(lead + cells) + " |")
        lines.append("")
        for (_, n, c, dtype), rs in mg:
            if any(r["kind"] == "group" for r in rs):
                continue
            lim = [r for r in rs if r["kind"] == "limit" and r["median_s"]]
            parts = [f"{LIMIT_LABEL.get(r['impl'], r['impl'])} {fmt_time(r['median_s'])} "
                     f"({r['limit_gbps']:.1f} GB/s)" for r in lim]
            reps = [r["repeats"] for r in rs if r["kind"] == "impl" and r["repeats"]]
            if reps:
                parts.append(f"repeats {min(reps)}–{max(reps)}")
            if rs[0]["load1_start"] is not None:
                parts.append(f"load {rs[0]['load1_start']:.1f}→{rs[0]['load1_end']:.1f}")
            extra = [f"{r['impl']}: {r['note']}" for r in rs if r.get("note")]
            lines.append(f"- {n}×{c} {dtype}: " + "; ".join(parts)
                         + (f". {'; '.join(extra)}" if extra else ""))
    fails = [r for r in rows if r.get("error")]
    if fails:
        lines += ["", "## Failures", ""]
        for r in fails:
            lines.append(f"- {r['n']}×{r['c']} {r['dtype']} {r['mode']} {r['impl']}: "
                         f"{r['error']}")
    lines += ["", "## Columns and method", ""] + notes
    return "\n".join(lines) + "\n"
