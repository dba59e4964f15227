"""Fuzzing the readers with corrupt files: truncated, overwritten, spliced bytes.

Whatever the bytes, ``crossent eval`` must either score the file or fail with exit status
1 and one line on stderr (a ``crossent.CrossEntropyError``), never a traceback, and must
leave no output file behind when it fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossent.__main__ import main

# The suite runs a fixed set of 30 examples per test (derandomized: CI sees the same
# files every time); CROSSENT_FUZZ_EXAMPLES=2000 runs a longer, random campaign.
_CAMPAIGN = os.environ.get("CROSSENT_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_CAMPAIGN or 30), deadline=None, derandomize=_CAMPAIGN is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _valid_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(40, 4))).astype(np.float32)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = rng.integers(0, 4, 40)
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    np.save(buf, z)
    files["z.npy"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez_compressed(buf, logits=z, labels=y)
    files["a.npz"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, logits=z, labels=y)
    files["b.npz"] = buf.getvalue()
    lines = ["p0,p1,p2,p3,label"] + [",".join(f"{v:.6f}" for v in row) + f",{lab}"
                                      for row, lab in zip(p, y)]
    files["p.csv"] = ("\n".join(lines) + "\n").encode()
    try:
        import pyarrow as pa
        import pyarrow.feather as feather
        import pyarrow.parquet as pq
    except ImportError:
        return files
    t = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), 4),
                  "label": y})
    sink = io.BytesIO()
    pq.write_table(t, sink, row_group_size=16)
    files["t.parquet"] = sink.getvalue()
    sink = io.BytesIO()
    pq.write_table(t, sink, row_group_size=16, compression="none")
    files["u.parquet"] = sink.getvalue()
    sink = io.BytesIO()
    feather.write_feather(t, sink, chunksize=16)
    files["t.feather"] = sink.getvalue()
    sink = io.BytesIO()
    feather.write_feather(t, sink, chunksize=16, compression="uncompressed")
    files["u.arrow"] = sink.getvalue()
    return files


FILES = _valid_files()
LABELS = io.BytesIO()
np.save(LABELS, np.random.default_rng(0).integers(0, 4, 40))


@st.composite
def corrupt(draw, data: bytes) -> bytes:
    """Truncate, overwrite or splice random bytes (usually a few edits)."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "overwrite", "insert", "delete", "zero_tail"]))
        pos = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "truncate":
            del b[pos:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            b[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del b[pos:pos + draw(st.integers(1, 16))]
        else:
            b[pos:] = bytes(len(b) - pos)
    return bytes(b)


@st.composite
def corrupt_text(draw, data: bytes) -> bytes:
    """CSV-level damage: stray delimiters, quotes, letters, NULs, blank or cut lines."""
    s = data.decode()
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(s)))
        piece = draw(st.sampled_from([",", "\n", '"', "x", "-", "nan", "inf", "\x00", "", "1e999",
                                      "\r\n", " ", "\t", "é", "9"]))
        cut = draw(st.integers(0, 3))
        s = s[:pos] + piece + s[pos + cut:]
    return s.encode()


def _run(name: str, content: bytes, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(content)
        with open(os.path.join(d, "y.npy"), "wb") as f:
            f.write(LABELS.getvalue())
        out = os.path.join(d, "report.json")
        args = ["eval", path, "--no-progress", "--output", out, "--json"]
        args += [a.replace("@DIR", d) for a in extra]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = main(args)
        err = stderr.getvalue()
        assert rc in (0, 1), (rc, err)
        if rc == 0:
            doc = json.loads(stdout.getvalue())
            assert doc["n"] >= 1
            with open(out) as f:
                assert json.load(f) == doc
        else:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("crossent eval: error: "), err
            assert not os.path.exists(out)
        assert sorted(os.listdir(d)) in (sorted([name, "y.npy"]),
                                         sorted([name, "y.npy", "report.json"]))


@FUZZ
@given(data=st.data())
def test_fuzz_npy(data):
    blob = data.draw(corrupt(FILES["z.npy"]))
    _run("z.npy", blob, ["--labels", "@DIR/y.npy"])


@FUZZ
@given(data=st.data(), name=st.sampled_from(["a.npz", "b.npz"]))
def test_fuzz_npz(data, name):
    _run(name, data.draw(corrupt(FILES[name])), [])


@FUZZ
@given(data=st.data(), text=st.booleans())
def test_fuzz_csv(data, text):
    raw = FILES["p.csv"]
    blob = data.draw(corrupt_text(raw) if text else corrupt(raw))
    _run("p.csv", blob, [])


@FUZZ
@given(data=st.data(), name=st.sampled_from(["t.parquet", "u.parquet"]))
def test_fuzz_parquet(data, name):
    if name not in FILES:
        pytest.skip("pyarrow is not installed")
    _run(name, data.draw(corrupt(FILES[name])), [])


@FUZZ
@given(data=st.data(), name=st.sampled_from(["t.feather", "u.arrow"]))
def test_fuzz_arrow(data, name):
    if name not in FILES:
        pytest.skip("pyarrow is not installed")
    _run(name, data.draw(corrupt(FILES[name])), [])


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_truncation_point_of_a_small_file(name):
    """Cut each file at (up to) 60 evenly spread points, the header region included."""
    raw = FILES[name]
    extra = ["--labels", "@DIR/y.npy"] if name.endswith(".npy") else []
    for cut in sorted(set(np.linspace(0, len(raw) - 1, 60).astype(int))):
        _run(name, raw[:cut], extra)
