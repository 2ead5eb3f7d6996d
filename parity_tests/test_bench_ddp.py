"""`backprop-lab bench --data-parallel` (experiments/bench_ddp.py): real spawned ranks over gloo on
127.0.0.1. Its figures are timings (not asserted); what is checked is that the rows are there and
consistent, that manual DDP and torch's DDP take the same steps, and that a failing rank is named."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments import bench_ddp

pytestmark = [pytest.mark.slow, pytest.mark.ddp]  # ~10 CPU-seconds: each rank is a fresh interpreter


def test_rows_for_each_rank_count_and_side():
    rows = bench_ddp.measure("float64", rounds=2, n=3)
    assert [(r["ranks"], r["impl"]) for r in rows] == [(w, i) for w in bench_ddp.RANKS for i in bench_ddp.IMPLS]
    for r in rows:
        # manual DDP and torch DDP from the same weights on the same shards: the same parameters after
        # the warm-up steps, to float64 rounding
        assert r["warmup_max_abs_diff"] <= 1e-12, r
        assert r["median_ms"] > 0 and r["all_reduce_alone_ms"] > 0
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["ranks"])
        assert r["shard"] == r["global_batch"] // r["ranks"]
    one = {r["impl"]: r["median_ms"] for r in rows if r["ranks"] == 1}
    for r in rows:
        assert r["speedup"] == pytest.approx(one[r["impl"]] / r["median_ms"])
    assert all((r["all_reduce_wait_ms"] is None) == (r["impl"] == "torch-ddp") for r in rows)


def test_a_failing_rank_is_named(monkeypatch):
    monkeypatch.setattr(bench_ddp, "TIMEOUT_S", 120)
    with pytest.raises(RuntimeError, match=r"bench --data-parallel: rank \d of 2: TypeError: dtype: expected float32 or float64"):
        bench_ddp._run_world(2, (64, 256, 256, 10), 256, "float16", 1, 1)  # a dtype bench.build refuses


def test_the_cli_prints_and_writes_the_section(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "experiments", "bench", "--quick", "--no-memory", "--dtype", "float32",
                        "--models", "2-4-1", "--rounds", "1", "--data-parallel", "--json", str(out),
                        "--logdir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "data parallel: 64-256-256-10" in r.stdout and "torch-ddp" in r.stdout
    dp = json.loads(out.read_text())["data_parallel"]
    assert {(d["ranks"], d["impl"]) for d in dp} == {(1, "manual-ddp"), (1, "torch-ddp"), (2, "manual-ddp"),
                                                     (2, "torch-ddp")}
    assert max(len(line) for line in r.stdout.splitlines() if str(tmp_path) not in line) <= 100
