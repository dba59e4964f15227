"""``crossent eval --dask``: a local cluster of 2 workers scores a partitioned Parquet
dataset (and a .npy with separate labels) to the single-machine figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("distributed")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from crossent.__main__ import main  # noqa: E402
from crossent._eval.dask import cluster_client, run_with_client  # noqa: E402
from crossent._eval.errors import ClusterError, LabelError  # noqa: E402
from crossent._eval.job import Source, plan  # noqa: E402

N, C = 6000, 12
FIGURES = ("cross_entropy", "cross_entropy_bits", "perplexity", "accuracy", "top_k_accuracy",
           "brier", "ece", "normalized_cross_entropy")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(N, C)) * 3).astype(np.float32)
    y = rng.integers(0, C, N)
    parts = d / "parts"
    parts.mkdir()
    bounds = [0, 1000, 2500, 2600, 4700, N]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        t = pa.table({"logits": pa.FixedSizeListArray.from_arrays(
            pa.array(z[a:b].reshape(-1)), C), "label": y[a:b]})
        pq.write_table(t, parts / f"part-{i}.parquet", row_group_size=300)
    np.save(d / "z.npy", z)
    y_bad = y.copy()
    y_bad[5123] = C + 3
    np.save(d / "y.npy", y)
    np.save(d / "y_bad.npy", y_bad)
    return d


@pytest.fixture(scope="module")
def client():
    with cluster_client("local:2") as (c, n):
        assert n == 2
        yield c


def _same(a, b):
    for k in FIGURES:
        assert a[k] == pytest.approx(b[k], rel=1e-12, abs=0), k
    assert a["n"] == b["n"]
    assert a["worst"] == b["worst"]
    # entry by entry: pytest >= 9.2's approx rejects a list of dicts
    assert len(a["per_class"]) == len(b["per_class"])
    for x, y in zip(a["per_class"], b["per_class"]):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-12), (x, k)
            else:
                assert x[k] == y[k], (x, k)
    assert a["loss_histogram"] == b["loss_histogram"]


def test_partitioned_parquet_on_two_workers(dataset, client):
    p = plan(Source(str(dataset / "parts")), None, options={"label_smoothing": 0.05})
    single = p.score().result().to_dict()
    for partitions in (None, 7):
        ev = run_with_client(p, client, 2, partitions=partitions)
        _same(ev.result().to_dict(), single)
    assert len(p.partitions(700)) > 5  # whole row groups, never across files
    assert all(b - a <= 700 for a, b in p.partitions(700))


def test_npy_with_separate_labels_and_errors_from_workers(dataset, client):
    p = plan(Source(str(dataset / "z.npy")), Source(str(dataset / "y.npy")), input="logits")
    _same(run_with_client(p, client, 2).result().to_dict(), p.score().result().to_dict())
    bad = plan(Source(str(dataset / "z.npy")), Source(str(dataset / "y_bad.npy")))
    with pytest.raises(LabelError) as info:
        run_with_client(bad, client, 2, partitions=4)
    assert info.value.row == 5123 and "y_bad.npy" in str(info.value)


def test_cli_with_the_clusters_address(dataset, client, capsys):
    addr = client.scheduler.address
    rc = main(["eval", str(dataset / "parts"), "--dask", addr, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rc = main(["eval", str(dataset / "parts"), "--json", "--no-progress"])
    single = json.loads(capsys.readouterr().out)
    _same(json.loads(out), single)


def test_cluster_errors(capsys):
    with pytest.raises(ClusterError, match="local:N"):
        with cluster_client("local:zero"):
            pass
    rc = main(["eval", "--example", "textbook", "--dask", "local:x", "--no-progress"])
    assert rc == 1 and "local:N" in capsys.readouterr().err
