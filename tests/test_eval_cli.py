"""``crossent eval``: every format gives the in-memory figures; errors are one line with
file/row/column, exit status 1 (2 for usage), and no output file."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from crossent.__main__ import main
from crossent._eval.job import Progress, Source, plan
from crossent.metrics import evaluate

N, C = 1000, 5
NAMES = ["cat", "dog", "bird", "fish", "owl"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(N, C)) * 2).astype(np.float32)
    y = rng.integers(0, C, N)
    return z, y


@pytest.fixture(scope="module")
def expected(data):
    z, y = data
    return evaluate(z, y, input="logits").to_dict()


def run(args, capsys):
    rc = main(["eval", "--no-progress", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(args, capsys):
    rc, out, err = run([*args, "--json"], capsys)
    assert rc == 0, err
    return json.loads(out)


def same(doc, expected, keys=("cross_entropy", "brier", "ece", "accuracy", "top_k_accuracy")):
    assert doc["n"] == expected["n"]
    for k in keys:
        assert doc[k] == pytest.approx(expected[k], rel=1e-12), k
    assert [w["row"] for w in doc["worst"]] == [w["row"] for w in expected["worst"]]


def _csv(path, z, y, header=True, label_names=None, delimiter=","):
    with open(path, "w") as f:
        if header:
            f.write(delimiter.join([f"p{j}" for j in range(z.shape[1])] + ["label"]) + "\n")
        for row, lab in zip(z, y):
            lab = label_names[lab] if label_names else lab
            f.write(delimiter.join([repr(float(v)) for v in row] + [str(lab)]) + "\n")


# ----------------------------------------------------------------------------- main job


def test_example_runs_out_of_the_box(capsys):
    rc, out, err = run(["--example"], capsys)
    assert rc == 0, err
    assert "example: textbook" in out and "example: digits" in out
    assert "1.4978661 nats" in out  # (log 10 + log 2) / 2
    doc = run_json(["--example", "textbook"], capsys)
    assert doc["cross_entropy"] == pytest.approx(1.4978661367769954, rel=1e-15)
    assert doc["input"]["kind"] == "probs" and doc["input"]["assumed"]
    digits = run_json(["--example", "digits"], capsys)
    assert digits["n"] == 450 and digits["n_classes"] == 10
    assert 0.15 < digits["cross_entropy"] < 0.3 and digits["accuracy"] > 0.9
    both = run_json(["--example"], capsys)
    assert set(both) == {"textbook", "digits"}


def test_module_entry_point_and_demo():
    r = subprocess.run([sys.executable, "-m", "crossent", "eval", "--example", "textbook",
                        "--json"], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout)["n"] == 2
    assert r.stderr == ""  # not a terminal: no progress bar
    r = subprocess.run([sys.executable, "-m", "crossent"], capture_output=True, text=True,
                       check=True)
    assert "Textbook" in r.stdout and "crossent eval" in r.stdout


# ----------------------------------------------------------------------------- formats


def test_npy_with_labels(tmp_path, data, expected, capsys):
    z, y = data
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    doc = run_json([tmp_path / "z.npy", "--labels", tmp_path / "y.npy"], capsys)
    same(doc, expected)
    assert doc["input"]["kind"] == "logits" and doc["input"]["assumed"]
    # Fortran order and big-endian arrays are read too
    np.save(tmp_path / "zf.npy", np.asfortranarray(z).astype(">f4"))
    same(run_json([tmp_path / "zf.npy", "--labels", tmp_path / "y.npy"], capsys), expected)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz(tmp_path, data, expected, capsys, compressed):
    z, y = data
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "a.npz", logits=z, labels=y)
    same(run_json([tmp_path / "a.npz"], capsys), expected)
    save(tmp_path / "b.npz", out=z, truth=y)
    same(run_json([tmp_path / "b.npz", "--pred-cols", "out", "--label-col", "truth"], capsys),
         expected)


def test_csv_tsv_gz_and_class_names(tmp_path, data, expected, capsys):
    z, y = data
    _csv(tmp_path / "p.csv", z, y)
    doc = run_json([tmp_path / "p.csv"], capsys)
    same(doc, expected)
    assert doc["class_names"] == [f"p{j}" for j in range(C)]
    _csv(tmp_path / "p.tsv", z, y, delimiter="\t")
    same(run_json([tmp_path / "p.tsv"], capsys), expected)
    with open(tmp_path / "p.csv", "rb") as f, gzip.open(tmp_path / "p.csv.gz", "wb") as g:
        g.write(f.read())
    same(run_json([tmp_path / "p.csv.gz"], capsys), expected)
    # labels as class names, mapped through --classes (or a file of names)
    _csv(tmp_path / "n.csv", z, y, label_names=NAMES)
    same(run_json([tmp_path / "n.csv", "--classes", ",".join(NAMES)], capsys), expected)
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    same(run_json([tmp_path / "n.csv", "--classes", f"@{tmp_path / 'names.txt'}"], capsys),
         expected)
    # no header: columns by index
    _csv(tmp_path / "nh.csv", z, y, header=False)
    same(run_json([tmp_path / "nh.csv", "--no-header", "--label-col", "5"], capsys), expected)
    # column selection by range and by glob; labels in a separate CSV
    np.savetxt(tmp_path / "y.csv", y, fmt="%d", header="y", comments="")
    same(run_json([tmp_path / "p.csv", "--pred-cols", "0:5", "--labels", tmp_path / "y.csv"],
                  capsys), expected)
    same(run_json([tmp_path / "p.csv", "--pred-cols", "p*", "--label-col", "label"], capsys),
         expected)
    # a first row of numbers only is data when it has one column or a non-integer
    np.savetxt(tmp_path / "y_plain.csv", y, fmt="%d")
    same(run_json([tmp_path / "nh.csv", "--label-col", "5"], capsys), expected)
    same(run_json([tmp_path / "p.csv", "--pred-cols", "0:5", "--labels",
                   tmp_path / "y_plain.csv"], capsys), expected)


def test_header_names_the_classes(tmp_path, capsys):
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    with open(tmp_path / "c.csv", "w") as f:
        f.write("cat,dog,bird,truth\n")
        for row, lab in zip(p, ["cat", "bird", "cat"]):
            f.write(",".join(map(str, row)) + f",{lab}\n")
    doc = run_json([tmp_path / "c.csv", "--label-col", "truth"], capsys)
    assert doc["n"] == 3 and doc["accuracy"] == pytest.approx(2 / 3)
    assert doc["cross_entropy"] == pytest.approx(-(np.log(0.7) + np.log(0.8) + np.log(0.3)) / 3)
    assert doc["worst"][0]["label_name"] == "cat" and doc["worst"][0]["predicted_name"] == "dog"


def test_parquet_and_arrow(tmp_path, data, expected, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.feather as feather
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    z, y = data
    lst = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), C)
    t = pa.table({"logits": lst, "label": y})
    pq.write_table(t, tmp_path / "l.parquet", row_group_size=128)
    same(run_json([tmp_path / "l.parquet"], capsys), expected)
    # variable-size list type, one column per class, string labels
    var = pa.ListArray.from_arrays(pa.array(np.arange(N + 1) * C, pa.int32()),
                                   pa.array(z.reshape(-1)))
    cols = {NAMES[j]: z[:, j] for j in range(C)}
    cols["target"] = pa.array(np.array(NAMES)[y]).dictionary_encode()
    pq.write_table(pa.table({"scores": var, "y": y}), tmp_path / "v.parquet")
    same(run_json([tmp_path / "v.parquet", "--pred-cols", "scores"], capsys), expected)
    pq.write_table(pa.table(cols), tmp_path / "c.parquet", row_group_size=300)
    same(run_json([tmp_path / "c.parquet"], capsys), expected)
    # a directory of part files is one dataset, in natural order (part-2 before part-10)
    d = tmp_path / "parts"
    d.mkdir()
    bounds = [0, 90, 200, 560, 1000]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(t.slice(a, b - a), d / f"part-{[2, 10, 11, 100][i]}.parquet",
                       row_group_size=64)
    (d / "_SUCCESS").write_text("")
    same(run_json([d], capsys), expected)
    # Arrow IPC file (Feather v2, compressed), IPC stream, directory of Arrow files
    feather.write_feather(t, tmp_path / "t.feather", chunksize=150)
    same(run_json([tmp_path / "t.feather"], capsys), expected)
    with ipc.new_stream(str(tmp_path / "t.arrows"), t.schema) as w:
        for b in t.to_batches(max_chunksize=333):
            w.write_batch(b)
    same(run_json([tmp_path / "t.arrows"], capsys), expected)
    # labels in a separate Parquet file
    pq.write_table(pa.table({"label": y}), tmp_path / "y.parquet", row_group_size=77)
    np.save(tmp_path / "z.npy", z)
    same(run_json([tmp_path / "z.npy", "--labels", tmp_path / "y.parquet"], capsys), expected)


def test_small_chunks_align_separate_files(tmp_path, data, expected):
    z, y = data
    np.save(tmp_path / "z.npy", z)
    np.savetxt(tmp_path / "y.csv", y, fmt="%d", header="label", comments="")
    p = plan(Source(str(tmp_path / "z.npy")), Source(str(tmp_path / "y.csv")),
             input="logits", chunk_bytes=1000)
    r = p.score().result()
    assert r.cross_entropy == pytest.approx(expected["cross_entropy"], rel=1e-12)
    assert [w["row"] for w in r.worst] == [w["row"] for w in expected["worst"]]
    part = plan(Source(str(tmp_path / "z.npy")), Source(str(tmp_path / "y.csv")),
                input="logits", chunk_bytes=1000).score(300, 700).result()
    assert part.n == 400 and all(300 <= w["row"] < 700 for w in part.worst)


def test_binary_predictions(tmp_path, capsys):
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.99, 500)
    y = (rng.uniform(size=500) < p).astype(int)
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "y.npy", y)
    doc = run_json([tmp_path / "p.npy", "--labels", tmp_path / "y.npy"], capsys)
    assert doc["binary"] and doc["input"]["kind"] == "probs"
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
    assert doc["cross_entropy"] == pytest.approx(ref, rel=1e-12)
    base = y.mean()
    h = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert doc["normalized_cross_entropy"] == pytest.approx(ref / h, rel=1e-12)
    with open(tmp_path / "b.csv", "w") as f:
        f.write("score,truth\n")
        for v, t in zip(np.log(p / (1 - p)), y):
            f.write(f"{float(v)!r},{['no', 'yes'][t]}\n")
    doc2 = run_json([tmp_path / "b.csv", "--label-col", "truth", "--classes", "no,yes"], capsys)
    assert doc2["input"]["kind"] == "logits"
    assert doc2["cross_entropy"] == pytest.approx(ref, rel=1e-9)


def test_options_reach_the_evaluator(tmp_path, data, capsys):
    z, y = data
    y = y.copy()
    y[::10] = -1
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    w = [1.0, 2.0, 0.5, 1.5, 1.0]
    doc = run_json([tmp_path / "z.npy", "--labels", tmp_path / "y.npy", "--input", "logits",
                    "--weight", ",".join(map(str, w)), "--ignore-index", "-1",
                    "--label-smoothing", "0.1", "--top-k", "2", "--bins", "5", "--worst", "3"],
                   capsys)
    ref = evaluate(z, y, input="logits", weight=w, ignore_index=-1, label_smoothing=0.1,
                   top_k=2, n_bins=5, worst=3)
    assert doc["cross_entropy"] == pytest.approx(ref.cross_entropy, rel=1e-12)
    assert doc["n_ignored"] == 100 and doc["top_k"] == 2 and len(doc["worst"]) == 3
    assert len(doc["reliability"]) == 5 and doc["input"]["assumed"] is False


# ----------------------------------------------------------------------------- outputs


def test_output_and_plot_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png, svg = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.svg"
    rc, stdout, err = run(["--example", "digits", "--output", out, "--plot", png], capsys)
    assert rc == 0, err
    assert "per class (10)" in stdout
    doc = json.loads(out.read_text())
    assert doc["n"] == 450
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run(["--example", "textbook", "--plot", svg], capsys)[0] == 0
    assert b"<svg" in svg.read_bytes()[:500]
    assert sorted(os.listdir(tmp_path)) == ["r.json", "r.png", "r.svg"]  # no temporaries


def test_missing_extras_name_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, _, err = run(["--example", "digits", "--plot", tmp_path / "x.png"], capsys)
    assert rc == 1 and "pip install 'crossent[plot]'" in err
    monkeypatch.setitem(sys.modules, "distributed", None)
    rc, _, err = run(["--example", "digits", "--dask", "local:1"], capsys)
    assert rc == 1 and "crossent[dask]" in err
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    rc, _, err = run([tmp_path / "x.parquet"], capsys)
    assert rc == 1 and "crossent[eval]" in err
    assert not (tmp_path / "x.png").exists()


def test_progress_bar_only_on_a_terminal(capsys):
    class Tty:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    old = sys.stderr
    sys.stderr = tty = Tty()
    try:
        bar = Progress(100, "rows", "crossent eval", enabled=True)
        bar.bar = None  # the built-in fallback (tqdm is optional)
        for _ in range(4):
            bar._last = 0.0
            bar.update(25)
        bar.close()
    finally:
        sys.stderr = old
    assert "100.0%" in tty.text
    assert not Progress(100, "rows", "x", enabled=True).enabled  # pytest's stderr: no tty


# ----------------------------------------------------------------------------- errors


@pytest.fixture()
def bad_files(tmp_path, data):
    z, y = data
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "y_short.npy", y[:-1])
    np.save(tmp_path / "y_range.npy", np.where(np.arange(N) == 617, 9, y))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    raw = (tmp_path / "z.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.npy").write_bytes(b"hello world, not numpy")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header_only.csv").write_text("p0,p1,label\n")
    (tmp_path / "cell.csv").write_text("p0,p1,label\n0.5,0.5,0\n0.1,0.9,1\n0.3,x7,1\n")
    (tmp_path / "short.csv").write_text("p0,p1,label\n0.5,0.5,0\n0.1,0.9\n")
    (tmp_path / "notprob.csv").write_text("p0,p1,label\n0.5,0.5,0\n0.2,0.9,1\n")
    (tmp_path / "names.csv").write_text("cat,dog,label\n0.5,0.5,cat\n0.2,0.8,dgo\n")
    (tmp_path / "words.csv").write_text("p0,p1,label\n0.5,0.5,cat\n")
    return tmp_path


ERRORS = [
    # args, exit status, what the one-line message must say
    (["missing.npy", "--labels", "y.npy"], 1, ["missing.npy", "no such file"]),
    (["z.npy", "--labels", "y_short.npy"], 1, ["1000 rows", "999"]),
    (["z.npy", "--labels", "y_range.npy"], 1, ["y_range.npy", "row 617", "label 9", "[0, 5)"]),
    (["trunc.npy", "--labels", "y.npy"], 1, ["trunc.npy", "truncated"]),
    (["garbage.npy", "--labels", "y.npy"], 1, ["garbage.npy", "not a valid .npy"]),
    (["obj.npy", "--labels", "y.npy"], 1, ["obj.npy", "Python objects"]),
    (["z.npy"], 1, ["z.npy", "no labels", "--labels"]),
    (["empty.csv"], 1, ["empty.csv", "empty"]),
    (["header_only.csv"], 1, ["header_only.csv", "no rows"]),
    (["cell.csv"], 1, ["cell.csv", "row 2", "column 'p1'", "'x7' is not a number"]),
    (["short.csv"], 1, ["short.csv", "row 1", "2 cells", "3"]),
    (["notprob.csv", "--input", "probs"], 1, ["notprob.csv", "row 1", "sum to 1.1"]),
    (["names.csv"], 1, ["names.csv", "row 1", "column 'label'", "'dgo'", "cat, dog"]),
    (["words.csv"], 1, ["words.csv", "row 0", "'cat'", "--classes"]),
    (["cell.csv", "--label-col", "nope"], 1, ["cell.csv", "no column named 'nope'", "'p0'"]),
    (["cell.csv", "--pred-cols", "p0,p9"], 1, ["no column named 'p9'"]),
    (["z.npy", "--labels", "y.npy", "--label-smoothing", "2"], 2, ["--label-smoothing", "[0, 1]"]),
    (["z.npy", "--labels", "y.npy", "--weight", "1,2"], 2, ["--weight", "5 classes"]),
    (["z.npy", "--labels", "y.npy", "--weight", "a,b"], 2, ["--weight"]),
    (["z.npy", "--labels", "y.npy", "--classes", "a,b"], 2, ["--classes", "5"]),
    (["z.npy", "--labels", "y.npy", "--eps", "0.7"], 2, ["--eps"]),
    (["z.npy", "--labels", "y.npy", "--top-k", "0"], 2, ["--top-k"]),
    (["z.npy", "--labels", "y.npy", "--plot", "x.jpg"], 2, ["--plot", ".png"]),
    (["z.npy", "--example"], 2, ["either"]),
    ([], 2, ["required"]),
    (["z.npy", "--labels", "y.npy", "--bogus"], 2, ["unrecognized"]),
]


@pytest.mark.parametrize("args,status,words", ERRORS, ids=[" ".join(e[0]) or "none" for e in ERRORS])
def test_errors_are_one_line_with_context(bad_files, capsys, monkeypatch, args, status, words):
    monkeypatch.chdir(bad_files)
    out_file = bad_files / "report.json"
    rc, out, err = run([*args, "--output", out_file], capsys)
    assert rc == status, err
    assert out == ""
    lines = err.strip().splitlines()
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("crossent eval: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert not out_file.exists()
    assert not [f for f in os.listdir(bad_files) if ".tmp" in f]
