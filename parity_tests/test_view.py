"""What a person sees after `backprop-lab all --quick`, asked of a real TensorBoard.

One `all --quick` (shared by every test here, and across pytest-xdist workers through a file
lock) is opened with `backprop-lab view`, which starts the venv's TensorBoard on 127.0.0.1;
the tests then read its HTTP API as the browser does: the runs, the scalar and image tags, the
custom-scalars layout and the HParams experiment and sessions. `backprop-lab runs` lists and
cleans runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from experiments import _lab, runner
from experiments.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
TB_RUN_LIMIT = 40  # TensorBoard enables no run by default past 40 (tf-runs-selector's maxNamesToEnableByDefault)
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]

pytestmark = pytest.mark.slow  # one `all --quick` (~50 CPU-s) and a TensorBoard server


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def run_all_quick(logdir):
    out = logdir.parent / "all.json"
    r = cli("all", "--quick", "--no-progress", "--json", str(out), "--logdir", str(logdir))
    return {"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-5000:],
            "report": json.loads(out.read_text()) if out.exists() else None}


@pytest.fixture(scope="module")
def all_quick(tmp_path_factory):
    """(logdir, result of the CLI): `all --quick` once per test session, whichever worker gets here first."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # no xdist: this session's own temporary folder
        logdir = tmp_path_factory.mktemp("all_quick") / "runs"
        result = run_all_quick(logdir)
        (logdir.parent / "result.json").write_text(json.dumps(result))  # kept, to read after a failure
        return logdir, result
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # common to this session's workers
    logdir, done = shared / "all_quick" / "runs", shared / "all_quick" / "result.json"
    with FileLock(str(shared / "all_quick.lock")):
        if not done.exists():
            logdir.parent.mkdir(exist_ok=True)
            done.write_text(json.dumps(run_all_quick(logdir)))
    return logdir, json.loads(done.read_text())


def post(url, body, timeout=10):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def session_groups(base):
    return post(f"{base}/data/plugin/hparams/session_groups",
                {"experimentName": "", "allowedStatuses": STATUSES, "colParams": [], "startIndex": 0,
                 "sliceSize": 1000})


AT_URL = {}  # TensorBoard's answers the moment view printed the URL


@pytest.fixture(scope="module")
def board(all_quick, tmp_path_factory):
    """`backprop-lab view --logdir LOGDIR`: its URL, once TensorBoard has loaded every run."""
    logdir, _ = all_quick
    err = open(tmp_path_factory.mktemp("view") / "view.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "experiments", "view", "--logdir", str(logdir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=err, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 300  # generous: on a loaded 2-core machine loading took > 120 s
        url = None
        while url is None:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "view exited early:\n" + "".join(lines)
            lines.append(line)
            m = re.search(r"TensorBoard: (http://127\.0\.0\.1:\d+/)", line)
            url = m and m.group(1).rstrip("/")
            assert time.monotonic() < deadline, "no URL printed:\n" + "".join(lines)
        AT_URL["scalars"] = get(f"{url}/data/plugin/scalars/tags")  # what a user sees who opens it at once
        n_runs = 2 * len(runner.EXPERIMENTS)
        while True:  # the Python loader reads runs one after another
            try:
                if session_groups(url)["totalSize"] >= n_runs:
                    break
            except urllib.error.HTTPError:  # HTTP 500 seen now and then while runs are still loading
                pass
            assert time.monotonic() < deadline, "TensorBoard did not load every run in time"
            time.sleep(0.5)
        yield url, "".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)  # how a user stops it: Ctrl-C
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            err.close()
        assert code == 0, f"view exited {code} on Ctrl-C"


# -- the `all` command's own report -------------------------------------------------------------

def test_all_quick_exits_0_every_claim_holds_output_fits_100_columns(all_quick):
    _, r = all_quick
    assert r["returncode"] == 0, r["stdout"][-3000:] + r["stderr"]
    report = r["report"]
    assert list(report) == list(runner.EXPERIMENTS)  # none silently missing
    for name, m in report.items():
        assert m["status"] == "ok", (name, m["notes"])
        assert m["claims"] and all(c["holds"] for c in m["claims"]), (name, [c["claim"] for c in m["claims"]
                                                                           if not c["holds"]])
        assert m["drift_ok"] is not False, name
    n = sum(len(m["claims"]) for m in report.values())
    assert f"{n}/{n} claims hold for both implementations" in r["stdout"]
    logdir = str(all_quick[0])
    long = [line for line in r["stdout"].splitlines() if len(line) > 100 and logdir not in line]  # a path is a path
    assert not long, long
    for m in report.values():  # claims are wrapped, never cut
        for c in m["claims"]:
            assert c["claim"].split()[-1] in r["stdout"], c["claim"]
    assert "…" not in r["stdout"]
    (hint,) = [line.split(":", 1)[1].split() for line in r["stdout"].splitlines()
               if line.startswith("view the latest runs:")]
    # works without an activated venv: the venv's backprop-lab, or this Python with -m experiments where the
    # package runs from a checkout on PYTHONPATH (no console script installed)
    assert (hint[1:2] == ["view"] or hint[1:4] == ["-m", "experiments", "view"]) and os.access(hint[0], os.X_OK), hint


def test_one_all_writes_two_runs_per_experiment(all_quick):
    logdir, _ = all_quick
    runs = sorted(os.path.relpath(d, logdir) for d, _, files in os.walk(logdir)
                  if any(f.startswith("events.out.tfevents") for f in files))
    assert len(runs) == 2 * len(runner.EXPERIMENTS) <= TB_RUN_LIMIT, runs
    for name in runner.EXPERIMENTS:
        (stamp,) = os.listdir(logdir / name)
        assert stamp.endswith("_quick"), stamp  # the non-default setting in the folder name
        assert {os.path.join(name, stamp, impl) for impl in _lab.IMPLS} <= set(runs)


# -- a real TensorBoard, started by `backprop-lab view` ----------------------------------------

def test_every_run_is_loaded_when_the_url_is_printed(board):
    """TensorBoard answers before it has read the event files, and reads the runs one after another: view
    printed the URL at its first answer, and a user opening it at once saw 20 of the 26 runs (1 s later).
    view now prints it once every run is read, and says how many runs there are."""
    url, text = board
    assert len(AT_URL["scalars"]) == 2 * len(runner.EXPERIMENTS), sorted(AT_URL["scalars"])
    assert f"({len(runner.EXPERIMENTS)} experiment(s), {2 * len(runner.EXPERIMENTS)} runs; Ctrl-C stops it)" in text


def test_view_serves_every_experiments_two_runs(board):
    url, printed = board
    assert set(get(f"{url}/data/runs")) == {f"{n}/{i}" for n in runner.EXPERIMENTS for i in _lab.IMPLS}
    for name in runner.EXPERIMENTS:
        assert f"{name}: " in printed


def test_tags_are_grouped_by_experiment_and_both_runs_log_the_same(board):
    url, _ = board
    for plugin in ("scalars", "images"):
        tags = get(f"{url}/data/plugin/{plugin}/tags")
        for name in runner.EXPERIMENTS:
            m, t = (set(tags.get(f"{name}/{i}", {})) for i in _lab.IMPLS)
            if plugin == "scalars":
                assert m, (name, "no scalars")
            assert m == t, (plugin, name, m ^ t)
            assert all(tag.startswith(f"{name}/") for tag in m), (plugin, name)


def test_custom_scalars_one_category_per_experiment_charts_match_both_runs(board):
    url, _ = board
    layout = get(f"{url}/data/plugin/custom_scalars/layout")
    tags = get(f"{url}/data/plugin/scalars/tags")
    categories = {c["title"]: c["chart"] for c in layout["category"]}
    assert set(categories) == set(runner.EXPERIMENTS)
    for name, charts in categories.items():
        logged = set(tags[f"{name}/manual"])
        for chart in charts:
            (pattern,) = chart["multiline"]["tag"]
            hits = {t for t in logged if re.search(pattern, t)}
            assert hits, (name, chart["title"])
            assert hits <= set(tags[f"{name}/torch"]), (name, chart["title"])  # so both runs are in its legend
            if "/grad_norm/" in pattern:  # one line per parameter, of one model only
                assert len({t.rsplit("/grad_norm/", 1)[0] for t in hits}) == 1, (name, chart["title"])
            else:  # one quantity of one model: two lines, manual and torch
                assert len(hits) == 1, (name, chart["title"], hits)
        titles = [c["title"] for c in charts]
        for i, title in enumerate(titles):  # a drift chart right after each training-loss chart
            model = title[: -len("loss/train")]
            if title.endswith("loss/train") and any(t.startswith(model + "parity/") for t in titles):
                assert titles[i + 1].startswith(model + "parity/"), (name, titles[i:i + 2])


def test_hparams_show_every_experiments_columns_with_impl(board):
    url, _ = board
    exp = post(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
    columns = {h["name"] for h in exp["hparamInfos"]}
    metrics = {m["name"]["tag"] for m in exp["metricInfos"]}
    mods = runner.experiments()
    for name, mod in mods.items():
        fields = {f.name for f in dataclasses.fields(mod.Config)} - set(_lab.LABEL_SKIP)
        assert fields <= columns, (name, fields - columns)
        assert mod.METRICS and {f"{name}/{t}" for t in mod.METRICS} <= metrics, name
    assert {"experiment", "impl"} <= columns
    groups = session_groups(url)["sessionGroups"]
    assert len(groups) == 2 * len(mods)
    seen = set()
    for g in groups:
        hp = g["hparams"]
        name, impl = hp["experiment"], hp["impl"]
        seen.add((name, impl))
        assert g["name"] == f"{name}/{impl}"
        values = {v["name"]["tag"]: v["value"] for v in g["metricValues"]}
        assert {f"{name}/{t}" for t in mods[name].METRICS} <= set(values), (name, impl)
    assert seen == {(n, i) for n in mods for i in _lab.IMPLS}


def test_a_second_view_of_one_experiment(board, all_quick):
    """`view NAME`: only that experiment's latest run (a second server, on another free port)."""
    logdir, _ = all_quick
    proc = subprocess.Popen([sys.executable, "-m", "experiments", "view", "xor", "--logdir", str(logdir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        while "TensorBoard:" not in line:
            line = proc.stdout.readline()
            assert line, "view exited early"
        url = re.search(r"(http://127\.0\.0\.1:\d+)/", line).group(1)
        assert url != board[0].rstrip("/")
        deadline = time.monotonic() + 300
        while set(get(f"{url}/data/runs")) != {"xor/manual", "xor/torch"}:  # until both are loaded
            assert time.monotonic() < deadline, get(f"{url}/data/runs")
            time.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        proc.stdout.close()


# -- `runs` --------------------------------------------------------------------------------------

def test_runs_lists_settings_and_outcome_and_cleans_older_ones(all_quick, tmp_path, capsys):
    logdir, r = all_quick
    src = logdir / "xor" / os.listdir(logdir / "xor")[0]
    for stamp in ("20200101-000000_quick", "20210101-000000_seed=3"):  # two older runs of xor
        shutil.copytree(src, tmp_path / "xor" / stamp)
    newest = tmp_path / "xor" / src.name
    shutil.copytree(src, newest)
    assert cli_main(["runs", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    n = len(r["report"]["xor"]["claims"])
    assert "xor  (3 runs)" in out and f"ok, {n}/{n} claims hold" in out and "20210101-000000_seed=3" in out
    assert cli_main(["runs", "--logdir", str(tmp_path), "--clean", "--keep", "1", "--dry-run"]) == 0
    assert "would remove 2 run(s)" in capsys.readouterr().out and len(os.listdir(tmp_path / "xor")) == 3
    assert cli_main(["runs", "--logdir", str(tmp_path), "--clean", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert "removing 2 run(s)" in out and "20200101-000000_quick" in out and "20210101-000000_seed=3" in out
    assert os.listdir(tmp_path / "xor") == [newest.name]  # the newest is kept


@pytest.mark.parametrize("argv", [["runs", "--clean", "--keep", "0"], ["view", "--port", "x"]])
def test_runs_and_view_bad_values_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_view_of_an_experiment_without_runs_exits_2_and_says_how_to_make_one(tmp_path, capsys):
    import re

    assert cli_main(["view", "xor", "--logdir", str(tmp_path)]) == 2
    err = re.sub(r"\n  (?=\S)", " ", capsys.readouterr().err)  # errors wrap at 100 columns
    assert "no runs of xor" in err and "backprop-lab run xor" in err
