"""What the experiments write to TensorBoard, read back by TensorBoard itself.

(a) event files through tensorboard's EventAccumulator: tags (each under the experiment's
name), per-step values, histograms, images, the config text, the custom-scalars layout and
the HParams session every run is; (b) a real
`tensorboard` server on 127.0.0.1 answering over HTTP with the logged values; (c) the
LOGDIR/<experiment>/<timestamp>/<impl> layout, where a second run never overwrites the first.
"""

from __future__ import annotations

import dataclasses
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
STAMP = re.compile(r"\d{8}-\d{6}(_[^/]+)?(-\d+)?")


def T(tag):
    """A tag as circles logs it, under the experiment's name (TensorBoard groups by that prefix)."""
    return f"circles/{tag}"


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
    expected = {T(t) for t in ("mlp/loss/train", "mlp/loss/val", "mlp/accuracy/train", "mlp/accuracy/val",
                               "mlp/accuracy/test", "mlp/lr", "mlp/parity/max_abs_param_diff", "mlp/grad_norm/0.weight",
                               "mlp/grad_norm/4.bias", "linear/loss/train", "linear/accuracy/test",
                               "linear/grad_norm/weight")}
    assert expected <= tags["manual"], expected - tags["manual"]
    assert all(t.startswith("circles/") for t in tags["manual"])  # TensorBoard groups charts by experiment


@pytest.mark.parametrize("tag", ["mlp/loss/train", "linear/loss/train"])
def test_loss_at_every_step_equals_the_returned_history(run, tag):
    _, metrics, ea = run
    for impl in _lab.IMPLS:
        events = ea[impl].Scalars(T(tag))
        history = metrics["history"][tag][impl]
        assert [e.step for e in events] == list(range(len(history))), (impl, tag)
        assert [e.value for e in events] == f32(history), (impl, tag)


def test_final_accuracy_and_drift_as_returned(run):
    _, metrics, ea = run
    for impl in _lab.IMPLS:
        assert ea[impl].Scalars(T("mlp/accuracy/test"))[-1].value == f32([metrics["results"][impl]["mlp_test_accuracy"]])[0]
        drift = [e.value for e in ea[impl].Scalars(T("mlp/parity/max_abs_param_diff"))]
        assert max(drift) <= _lab.DRIFT_TOL["float64"]


def test_histograms_of_weights_and_grads(run):
    _, _, ea = run
    for impl in _lab.IMPLS:
        tags = set(ea[impl].Tags()["histograms"])
        assert {T("mlp/weights/0.weight"), T("mlp/grads/0.weight"), T("mlp/weights/4.bias"),
                T("linear/weights/weight")} <= tags, impl
        h = ea[impl].Histograms(T("mlp/weights/0.weight"))[0].histogram_value
        assert h.num == 2 * 16  # Linear(2, 16).weight


def test_images_decode_as_png(run):
    from PIL import Image

    _, _, ea = run
    for impl in _lab.IMPLS:
        tags = set(ea[impl].Tags()["images"])
        assert {T("mlp/boundary"), T("linear/boundary")} <= tags, impl
        for tag in tags:
            ev = ea[impl].Images(tag)[-1]
            assert ev.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n", (impl, tag)
            img = Image.open(io.BytesIO(ev.encoded_image_string))
            assert img.format == "PNG" and img.size == (ev.width, ev.height), (impl, tag)
            assert min(img.size) >= 400, (impl, tag, img.size)  # legible at TensorBoard's card size


def test_config_is_logged_as_a_text_table(run):
    _, _, ea = run
    for impl in _lab.IMPLS:
        assert T("config/text_summary") in ea[impl].Tags()["tensors"], impl
        assert ea[impl].SummaryMetadata(T("config/text_summary")).plugin_data.plugin_name == "text"
        text = tensor_util.make_ndarray(ea[impl].Tensors(T("config/text_summary"))[0].tensor_proto).item().decode()
        assert "| n | 400 |" in text and "| impl | both |" in text and "| seed | 0 |" in text


def test_custom_scalars_layout_one_category_one_chart_per_model_and_quantity(run):
    _, _, ea = run
    tag = "custom_scalars__config__"
    assert tag in ea["manual"].Tags()["tensors"] and tag not in ea["torch"].Tags()["tensors"]  # written once
    assert ea["manual"].SummaryMetadata(tag).plugin_data.plugin_name == "custom_scalars"
    layout = layout_pb2.Layout.FromString(ea["manual"].Tensors(tag)[0].tensor_proto.string_val[0])
    (category,) = layout.category
    assert category.title == "circles"
    charts = [(c.title, list(c.multiline.tag)) for c in category.chart]
    titles = [t for t, _ in charts]
    scalar_tags = set(ea["manual"].Tags()["scalars"])
    assert scalar_tags == set(ea["torch"].Tags()["scalars"])  # so every chart holds both runs
    for title, patterns in charts:  # one pattern per chart, matching one model's quantity only
        (p,) = patterns
        hits = {t for t in scalar_tags if re.fullmatch(p, t)}
        assert hits, title
        assert len({_lab._model_of(t.split("/", 1)[1]) for t in hits}) == 1, (title, hits)
    for model in ("linear", "mlp"):  # the loss chart, then the drift chart beside it
        i = titles.index(f"{model}/loss/train")
        assert titles[i + 1].startswith(f"{model}/parity/max_abs_param_diff"), titles
    (gn,) = [p for t, (p,) in charts if t.startswith("mlp/grad_norm/")]  # per-parameter series share one chart
    assert {t for t in scalar_tags if re.fullmatch(gn, t)} == {t for t in scalar_tags if "/mlp/grad_norm/" in t}


def test_layout_ranks_loss_then_drift_then_accuracy_per_model():
    tags = ["a/accuracy/train", "a/grad_norm/w", "a/grad_norm/b", "a/loss/train", "a/parity/max_abs_param_diff",
            "b/loss/train", "lr"]
    (charts,) = _lab.layout("e", tags).values()
    assert list(charts) == ["a/loss/train", "a/parity/max_abs_param_diff = max |manual - torch| (drift)",
                            "a/accuracy/train", "a/grad_norm/* (one line per parameter)", "b/loss/train", "lr"]
    assert charts["a/grad_norm/* (one line per parameter)"] == ["Multiline", [r"^e/a/grad_norm/.*"]]
    assert charts["lr"] == ["Multiline", ["^e/lr$"]]


def hparams_content(ea):
    content = ea.PluginTagToContent("hparams")  # the hparams summaries carry metadata only, no tensor
    return {k: plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in content.items()}


def test_each_run_is_an_hparams_session_with_impl_and_its_settings(run):
    _, _, ea = run
    for impl in _lab.IMPLS:
        content = hparams_content(ea[impl])
        assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
        hp = content["_hparams_/session_start_info"].session_start_info.hparams
        assert hp["experiment"].string_value == "circles" and hp["impl"].string_value == impl
        assert hp["n"].number_value == 400 and hp["epochs"].number_value == 2 and hp["quick"].bool_value is True
        assert hp["dtype"].string_value == "float64" and "logdir" not in hp and "progress" not in hp
        assert content["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS


def test_the_hparams_experiment_has_every_experiments_columns(run):
    """Whichever run TensorBoard reads the experiment from, every experiment's settings and metrics are there."""
    from experiments import runner

    _, _, ea = run
    exp = hparams_content(ea["manual"])["_hparams_/experiment"].experiment
    columns = {h.name for h in exp.hparam_infos}
    metrics = {m.name.tag for m in exp.metric_infos}
    for name, mod in runner.experiments().items():
        fields = {f.name for f in dataclasses.fields(mod.Config)} - set(_lab.LABEL_SKIP)
        assert fields <= columns, (name, fields - columns)
        assert {f"{name}/{t}" for t in mod.METRICS} <= metrics, name
    assert {"experiment", "impl"} <= columns
    for tag in metrics:  # circles' own metrics are logged in this run
        if tag.startswith("circles/"):
            assert tag in ea["manual"].Tags()["scalars"], tag


def test_run_folder_names_carry_the_non_default_settings():
    assert _lab.run_label(_lab.RunConfig()) == ""
    assert _lab.run_label(_lab.RunConfig(dtype="float32", impl="manual", logdir="x", progress=False)) == \
        "_impl=manual_dtype=float32"
    assert _lab.run_label(circles.Config(quick=True, lr=0.5)) == "_quick_lr=0.5"


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
    history = {impl: metrics["history"]["mlp/loss/train"][impl] for impl in _lab.IMPLS}
    rows = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the server answers with every step of both runs
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                for impl, run_name in runs.items():
                    q = urllib.parse.urlencode({"run": run_name, "tag": T("mlp/loss/train")})
                    rows[impl] = get_json(f"{base}/data/plugin/scalars/scalars?{q}")  # [[wall_time, step, value]]
                if all(len(rows[i]) == len(history[i]) for i in _lab.IMPLS):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or the run not loaded yet (HTTP 400)
            time.sleep(0.25)
        assert set(runs.values()) <= set(get_json(f"{base}/data/runs"))
        assert T("mlp/loss/train") in get_json(f"{base}/data/plugin/scalars/tags")[runs["manual"]]
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
    assert os.path.basename(root).endswith("_quick_n=400_epochs=2")  # the settings that differ from the defaults
    assert sorted(os.listdir(root)) == ["manual", "outcome.json", "torch"]
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
        values = [e.value for e in accumulator(os.path.join(first["logdir"], impl)).Scalars(T("mlp/loss/train"))]
        assert values == f32(first["history"]["mlp/loss/train"][impl]), impl


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
            assert [e.value for e in accumulator(os.path.join(root, impl)).Scalars("same-second/loss/train")] == [k]
