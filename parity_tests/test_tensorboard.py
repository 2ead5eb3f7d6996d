"""What the experiments write to TensorBoard, read back by TensorBoard itself.

(a) event files through tensorboard's EventAccumulator: tags, per-step values, histograms,
images, the config text, the custom-scalars layout and an hparams run; (b) a real
`tensorboard` server on 127.0.0.1 answering over HTTP with the logged values; (c) the
LOGDIR/<experiment>/<timestamp>/<impl> layout, where a second run never overwrites the first.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from experiments import _lab, circles

EVERYTHING = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
STAMP = re.compile(r"\d{8}-\d{6}(-\d+)?")


def small_config(logdir):
    """circles at its smallest: the logging is under test here, not the claims."""
    return circles.Config(logdir=str(logdir), quick=True, progress=False, n=400, epochs=2)


def accumulator(path):
    ea = EventAccumulator(str(path), size_guidance=EVERYTHING)
    ea.Reload()
    return ea


def f32(values):
    """TensorBoard stores scalars as float32: the logged value, as it reads back."""
    return [float(np.float32(v)) for v in values]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tb")
    metrics = circles.main(small_config(logdir))
    assert metrics["status"] == "ok"
    return logdir, metrics, {impl: accumulator(os.path.join(metrics["logdir"], impl)) for impl in _lab.IMPLS}


# -- (a) event files, read back with EventAccumulator -------------------------------------------

def test_both_implementations_log_the_same_scalar_tags(run):
    _, _, ea = run
    tags = {impl: set(a.Tags()["scalars"]) for impl, a in ea.items()}
    assert tags["manual"] == tags["torch"]
    expected = {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "accuracy/test", "lr",
                "parity/max_abs_param_diff", "grad_norm/0.weight", "grad_norm/4.bias",
                "linear/loss/train", "linear/accuracy/test", "linear/grad_norm/weight"}
    assert expected <= tags["manual"], expected - tags["manual"]


@pytest.mark.parametrize("tag", ["loss/train", "linear/loss/train"])
def test_loss_at_every_step_equals_the_returned_history(run, tag):
    _, metrics, ea = run
    for impl in _lab.IMPLS:
        events = ea[impl].Scalars(tag)
        history = metrics["history"][tag][impl]
        assert [e.step for e in events] == list(range(len(history))), (impl, tag)
        assert [e.value for e in events] == f32(history), (impl, tag)


def test_final_accuracy_and_drift_as_returned(run):
    _, metrics, ea = run
    for impl in _lab.IMPLS:
        assert ea[impl].Scalars("accuracy/test")[-1].value == f32([metrics["results"][impl]["mlp_test_accuracy"]])[0]
        drift = [e.value for e in ea[impl].Scalars("parity/max_abs_param_diff")]
        assert max(drift) <= _lab.DRIFT_TOL["float64"]


def test_histograms_of_weights_and_grads(run):
    _, _, ea = run
    for impl in _lab.IMPLS:
        tags = set(ea[impl].Tags()["histograms"])
        assert {"weights/0.weight", "grads/0.weight", "weights/4.bias", "linear/weights/weight"} <= tags, impl
        h = ea[impl].Histograms("weights/0.weight")[0].histogram_value
        assert h.num == 2 * 16  # Linear(2, 16).weight


def test_images_decode_as_png(run):
    from PIL import Image

    _, _, ea = run
    for impl in _lab.IMPLS:
        tags = set(ea[impl].Tags()["images"])
        assert {"boundary", "linear/boundary"} <= tags, impl
        for tag in tags:
            ev = ea[impl].Images(tag)[-1]
            assert ev.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n", (impl, tag)
            img = Image.open(io.BytesIO(ev.encoded_image_string))
            assert img.format == "PNG" and img.size == (ev.width, ev.height), (impl, tag)


def test_config_is_logged_as_a_text_table(run):
    _, _, ea = run
    for impl in _lab.IMPLS:
        assert "config/text_summary" in ea[impl].Tags()["tensors"], impl
        assert ea[impl].SummaryMetadata("config/text_summary").plugin_data.plugin_name == "text"
        text = tensor_util.make_ndarray(ea[impl].Tensors("config/text_summary")[0].tensor_proto).item().decode()
        assert "| n | 400 |" in text and "| impl | both |" in text and "| seed | 0 |" in text


def test_custom_scalars_layout_overlays_manual_and_torch(run):
    _, _, ea = run
    tag = "custom_scalars__config__"
    assert tag in ea["manual"].Tags()["tensors"]
    assert ea["manual"].SummaryMetadata(tag).plugin_data.plugin_name == "custom_scalars"
    layout = layout_pb2.Layout.FromString(ea["manual"].Tensors(tag)[0].tensor_proto.string_val[0])
    (category,) = layout.category
    assert category.title == "manual vs torch"
    charts = {c.title: list(c.multiline.tag) for c in category.chart}
    assert set(charts) == {"loss", "accuracy", "parity drift", "gradient norms"}
    scalar_tags = ea["manual"].Tags()["scalars"]
    for title, patterns in charts.items():  # every chart's regex matches some logged tag
        assert any(re.fullmatch(p, t) for p in patterns for t in scalar_tags), title


def test_hparams_run_is_readable(tmp_path):
    """A sweep logs hparams into a named run under the implementation's directory."""
    cfg = _lab.RunConfig(logdir=str(tmp_path), progress=False)
    with _lab.RunLogger("hparams-check", cfg) as log:
        log.hparams({"lr": 0.1, "hidden": 8, "act": "relu"}, {"hparam/accuracy": 0.875}, run_name="lr=0.1")
    ea = accumulator(os.path.join(log.root, "manual", "lr=0.1"))
    content = ea.PluginTagToContent("hparams")  # the hparams summaries carry metadata only, no tensor
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == 0.1 and start.hparams["hidden"].number_value == 8
    assert start.hparams["act"].string_value == "relu"
    assert [e.value for e in ea.Scalars("hparam/accuracy")] == [0.875]


# -- (b) a real tensorboard server --------------------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def test_tensorboard_server_serves_the_logged_scalars(run, tmp_path):
    logdir, metrics, _ = run
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
           "--port", str(port), "--load_fast", "false", "--reload_interval", "1"]  # keeps <= 1000 scalars per tag
    log = open(tmp_path / "tensorboard.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    runs = {impl: os.path.relpath(os.path.join(metrics["logdir"], impl), logdir).replace(os.sep, "/")
            for impl in _lab.IMPLS}
    history = {impl: metrics["history"]["loss/train"][impl] for impl in _lab.IMPLS}
    rows = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the server answers with every step of both runs
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                for impl, run_name in runs.items():
                    q = urllib.parse.urlencode({"run": run_name, "tag": "loss/train"})
                    rows[impl] = get_json(f"{base}/data/plugin/scalars/scalars?{q}")  # [[wall_time, step, value]]
                if all(len(rows[i]) == len(history[i]) for i in _lab.IMPLS):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or the run not loaded yet (HTTP 400)
            time.sleep(0.25)
        assert set(runs.values()) <= set(get_json(f"{base}/data/runs"))
        assert "loss/train" in get_json(f"{base}/data/plugin/scalars/tags")[runs["manual"]]
        for impl in _lab.IMPLS:
            assert [r[1] for r in rows.get(impl, [])] == list(range(len(history[impl]))), impl
            assert [r[2] for r in rows[impl]] == f32(history[impl]), impl
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- (c) the run-directory layout -----------------------------------------------------------------

def event_files(path):
    return {f: os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.startswith("events.out.tfevents")}


def test_runs_go_to_logdir_experiment_timestamp_impl(run):
    logdir, metrics, _ = run
    root = metrics["logdir"]
    assert os.path.dirname(root) == os.path.join(str(logdir), "circles")
    assert STAMP.fullmatch(os.path.basename(root)), root
    assert sorted(os.listdir(root)) == ["manual", "torch"]
    for impl in _lab.IMPLS:
        assert len(event_files(os.path.join(root, impl))) == 1, impl


def test_a_second_run_never_overwrites_the_first(tmp_path):
    first = circles.main(small_config(tmp_path))
    before = {impl: event_files(os.path.join(first["logdir"], impl)) for impl in _lab.IMPLS}
    second = circles.main(small_config(tmp_path))
    assert second["logdir"] != first["logdir"]
    assert sorted(os.listdir(tmp_path / "circles")) == sorted(os.path.basename(m["logdir"]) for m in (first, second))
    for impl in _lab.IMPLS:
        assert event_files(os.path.join(first["logdir"], impl)) == before[impl], impl
        values = [e.value for e in accumulator(os.path.join(first["logdir"], impl)).Scalars("loss/train")]
        assert values == f32(first["history"]["loss/train"][impl]), impl


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path, monkeypatch):
    import datetime

    frozen = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: datetime.datetime(2024, 5, 6, 7, 8, 9)))
    monkeypatch.setattr(_lab, "_dt", frozen)
    cfg = _lab.RunConfig(logdir=str(tmp_path), progress=False)
    roots = []
    for k in range(3):
        with _lab.RunLogger("same-second", cfg) as log:
            log.scalar("loss/train", {"manual": k, "torch": k}, 0)
        roots.append(log.root)
    assert [os.path.basename(r) for r in roots] == ["20240506-070809", "20240506-070809-2", "20240506-070809-3"]
    for k, root in enumerate(roots):  # each run kept its own value
        for impl in _lab.IMPLS:
            assert [e.value for e in accumulator(os.path.join(root, impl)).Scalars("loss/train")] == [k]
