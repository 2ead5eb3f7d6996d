"""`backprop-lab bench`'s reference steps: the straight-line NumPy floor (the same step as manual-numpy, so
that a goal below it is shown out of reach by a measurement), the matmuls-alone floor, and the unfused
autograd GPT (autograd on manual's op set). Each that computes a step must be the same math: checked
here against torch autograd's step (loss and every updated weight)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

from experiments import bench


@pytest.mark.parametrize("floor", ["numpy", "torch"])
@pytest.mark.parametrize("sizes, batch", [((2, 4, 1), 4), ((2, 16, 16, 1), 64), ((64, 32, 32, 10), 16)])
def test_the_floors_take_autograds_step(sizes, batch, floor):
    name, make = (bench.FLOOR, bench.numpy_floor_step) if floor == "numpy" else (bench.TORCH_FLOOR, bench.torch_floor_step)
    steps = bench.make_steps(sizes, batch, "float64", "cpu", only="autograd")
    steps[name] = make(sizes, batch, "float64")
    assert bench.check_agree(steps, "float64") <= 1e-13  # raises on any loss or weight that differs
    for _ in range(3):  # and it keeps stepping alike
        for step, _ in steps.values():
            step()
    a, f = steps["autograd"][1](), steps[name][1]()
    assert max(float(np.max(np.abs(a[k] - f[k]))) for k in a) <= 1e-13


@pytest.mark.parametrize("floor", ["numpy", "torch"])
def test_a_wrong_floor_is_caught(monkeypatch, floor):
    name, make = (bench.FLOOR, bench.numpy_floor_step) if floor == "numpy" else (bench.TORCH_FLOOR, bench.torch_floor_step)
    steps = bench.make_steps((2, 16, 16, 1), 64, "float64", "cpu", only="autograd")
    steps[name] = make((2, 16, 16, 1), 64, "float64")
    monkeypatch.setattr(bench, "LR", bench.LR * 1.01)  # read by the floor's update: it steps 1% too far
    with pytest.raises(AssertionError, match=f"{name} updated"):
        bench.check_agree(steps, "float64")


def test_the_floor_is_reported_with_manual_numpy_for_mlps_only():
    peaks = {"float64": {"numpy": 1.0, "torch": 1.0}}
    rows = bench.bench_model("2-4-1", (2, 4, 1), 4, "float64", "cpu", rounds=1, target_s=0.001, peaks=peaks)
    assert [r["impl"] for r in rows] == ["manual-numpy", "manual-torch", "autograd"]  # still 3 rows
    assert rows[0]["numpy_floor_ms"] > 0 and rows[0]["numpy_floor_ratio"] > 0
    assert all("numpy_floor_ms" not in r for r in rows[1:])
    assert rows[1]["torch_matmuls_ms"] > 0 and rows[1]["torch_matmuls_ratio"] > 0  # beside manual-torch only
    assert rows[1]["torch_floor_ms"] > 0 and rows[1]["torch_floor_ratio"] > 0
    assert all("torch_matmuls_ms" not in r and "torch_floor_ms" not in r for r in (rows[0], rows[2]))
    cnn = bench.bench_model("cnn-digits", {"cnn": "digits"}, 4, "float64", "cpu", rounds=1, target_s=0.001, peaks=peaks)
    assert all("numpy_floor_ms" not in r and "torch_matmuls_ms" not in r and "torch_floor_ms" not in r for r in cnn)


def test_the_matmul_floor_runs_the_steps_matmuls():
    """Forward: one x W^T per layer; backward: g^T a per layer and g W for all but the first: 3L - 1."""
    calls = []
    real = torch.Tensor.__matmul__
    step, _ = bench.torch_matmul_step((3, 5, 7, 2), 4, "float64")
    try:
        torch.Tensor.__matmul__ = lambda a, b: calls.append((tuple(a.shape), tuple(b.shape))) or real(a, b)
        step()
    finally:
        torch.Tensor.__matmul__ = real
    assert calls == [((4, 3), (3, 5)), ((4, 5), (5, 7)), ((4, 7), (7, 2)),
                     ((5, 4), (4, 3)), ((7, 4), (4, 5)), ((4, 7), (7, 5)), ((2, 4), (4, 7)), ((4, 2), (2, 7))]


GPT_SMALL = dict(block_size=6, vocab_size=7, n_layer=2, n_head=2, n_embd=8)


def _unfused_takes_autograds_step(spec, batch, make):
    """An autograd-unfused reference against the twin's step: the same loss and updated weights after one step
    (check_agree) and after three more, float64 to 1e-12; returns the aten ops one more step of it runs."""
    from torch.profiler import ProfilerActivity, profile

    steps = bench.make_steps(spec, batch, "float64", "cpu", only="autograd")
    steps[bench.UNFUSED] = make(spec, batch, "float64")
    assert bench.check_agree(steps, "float64") <= 1e-12
    for _ in range(3):
        for step, _ in steps.values():
            step()
    a, u = steps["autograd"][1](), steps[bench.UNFUSED][1]()
    assert max(float(np.max(np.abs(a[k] - u[k]))) for k in a) <= 1e-12
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        steps[bench.UNFUSED][0]()
    return {e.key for e in prof.key_averages()}


def test_unfused_gpt_takes_autograds_step_without_the_fused_kernels():
    """The GPT reference beside manual-torch: torch autograd on elementary ops. Same math as the twin's step
    (loss and every updated weight, three steps), and none of the fused kernels it stands in for is run."""
    ran = _unfused_takes_autograds_step(GPT_SMALL, 3, bench.unfused_gpt_step)
    fused = [k for k in ran if "gelu" in k or "layer_norm" in k or "scaled_dot_product" in k
             or ("softmax" in k and "log_softmax" not in k)]
    assert not fused, fused
    assert "aten::erf" in ran and "aten::exp" in ran


def test_a_wrong_unfused_gpt_is_caught(monkeypatch):
    steps = bench.make_steps(GPT_SMALL, 3, "float64", "cpu", only="autograd")
    monkeypatch.setattr(torch.special, "erf", torch.tanh)  # a GELU that is not the GELU
    steps[bench.UNFUSED] = bench.unfused_gpt_step(GPT_SMALL, 3, "float64")
    with pytest.raises(AssertionError, match="autograd-unfused"):
        bench.check_agree(steps, "float64")


def test_the_unfused_gpt_is_reported_beside_manual_torch_for_gpts_only():
    peaks = {"float64": {"numpy": 1.0, "torch": 1.0}}
    rows = bench.bench_model("tiny-gpt", GPT_SMALL, 2, "float64", "cpu", rounds=1, target_s=0.001, peaks=peaks)
    assert [r["impl"] for r in rows] == ["manual-numpy", "manual-torch", "autograd"]
    assert rows[1]["autograd_unfused_ms"] > 0 and rows[1]["autograd_unfused_ratio"] > 0
    assert all("autograd_unfused_ms" not in r for r in (rows[0], rows[2]))
    mlp = bench.bench_model("2-4-1", (2, 4, 1), 4, "float64", "cpu", rounds=1, target_s=0.001, peaks=peaks)
    assert all("autograd_unfused_ms" not in r for r in mlp)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_unfused_norm_mlp_takes_autograds_step_without_the_fused_kernels(norm):
    """The +bn / +ln reference beside manual-torch: the same step as the twin's (loss and every updated weight
    over four steps; for batch norm, the running statistics after a forward), with no native_batch_norm /
    native_layer_norm."""
    spec = {"norm": norm, "sizes": (6, 8, 8, 3)}
    ran = _unfused_takes_autograds_step(spec, 5, bench.unfused_norm_step)
    assert not [k for k in ran if "batch_norm" in k or "layer_norm" in k], ran
    if norm == "batch":  # the running statistics follow torch's BatchNorm1d's: two fresh twins, one forward each
        from torch_ref import twin

        model, _, _ = bench.build(spec, "float64")
        fused, composed = twin(model), twin(model)
        x = torch.as_tensor(bench.data(spec, 5)[0])
        fused(x)
        h = x
        for m in composed:
            h = bench._composed_norm(h, m) if isinstance(m, torch.nn.BatchNorm1d) else m(h)
        for (k, v1), (_, v2) in zip(fused.state_dict().items(), composed.state_dict().items()):
            assert torch.allclose(v1.double(), v2.double(), rtol=1e-12, atol=1e-14), k


@pytest.mark.parametrize("name", [m[0] for m in bench.MODELS])
def test_the_memory_warm_up_is_a_tiny_model_of_the_same_kind(name):
    """Before the measured first step, each memory child runs a tiny model of the row's kind (same layers and
    loss, so the same kernels load): it must be that kind, smaller, and a real step all implementations agree on."""
    _, spec, batch = next(m for m in bench.MODELS if m[0] == name)
    wspec, wbatch = bench._warm_spec(spec)
    assert bench.spec_kind(wspec) == bench.spec_kind(spec) and wbatch <= batch
    if bench.spec_kind(spec) == "mlp":
        assert (wspec[-1] == 1) == (spec[-1] == 1)  # the same loss: MSE for one output, cross-entropy otherwise
    steps = bench.make_steps(wspec, wbatch, "float64", "cpu")
    assert bench.check_agree(steps, "float64") <= 1e-10


MIB = 2**20


def _holds_three_then_one(alloc):
    """A step whose arrays peak at 3 MiB held at once (1 MiB and 2 MiB together), then keeps 1 MiB."""
    kept = []

    def step():
        a = alloc(MIB)
        b = alloc(2 * MIB)
        del a
        c = alloc(MIB // 2)
        kept.append(b[: len(b) // 8] * 1)  # a new 0.25 MiB array: what outlives the step
        del b, c

    return step


@pytest.mark.parametrize("measure, alloc", [
    (bench._live_peak_numpy, lambda n: np.ones(n // 8)),  # float64: 8 bytes each
    (bench._live_peak_torch_cpu, lambda n: torch.ones(n // 4, dtype=torch.float32)),
])
def test_the_live_memory_measure_counts_what_is_held_at_once(measure, alloc):
    """bench's live-bytes peak against a closed form: 1 MiB + 2 MiB held together is 3 MiB, not the 3.5 MiB
    allocated in all, nor the 0.25 MiB still held after."""
    peak = measure(_holds_three_then_one(alloc))
    assert peak is not None and abs(peak - 3 * MIB) < 64 * 1024, peak / MIB


@pytest.mark.parametrize("spec, shapes", [({"cnn": "lenet"}, [(3, 6, 28, 28), (3, 16, 10, 10)]),
                                          ({"cnn": "digits"}, [(3, 16, 8, 8), (3, 32, 4, 4)])])
def test_conv_reference_runs_each_conv_layer_of_the_step(spec, shapes):
    """bench.torch_conv_step runs the CNN's convolution layers alone: one per Conv2d of the model, on inputs
    of the shapes they get in the step, and the forward it times is the convolution (torch's conv2d of the
    same input and weights)."""
    step, get = bench.torch_conv_step(spec, 3, "float64")
    assert get is None
    cl = dict(zip(step.__code__.co_freevars, (c.cell_contents for c in step.__closure__)))
    layers = cl["layers"]
    assert [tuple(g.shape) for _, _, _, _, g, _ in layers] == shapes
    assert [first for *_, first in layers] == [True] + [False] * (len(layers) - 1)
    x, w, b, geo, _, _ = layers[-1]
    pad = geo.pads[0][0]
    want = torch.nn.functional.conv2d(x, w, b, stride=geo.stride, padding=pad, dilation=geo.dilation)
    torch.testing.assert_close(step(), want, rtol=1e-12, atol=1e-12)


def test_one_slow_first_step_does_not_make_one_step_blocks(monkeypatch):
    """calibrate pauses first (SETTLE_S) and estimates from the faster of two blocks: a step that is slow once
    (another library's threads still spinning) then 1 ms still gets blocks of about target_s / 1 ms steps."""
    import time

    calls, slept = [], []
    real_sleep = time.sleep
    monkeypatch.setattr(bench.time, "sleep", lambda s: slept.append(s))

    def step():
        calls.append(1)
        real_sleep(0.08 if len(calls) == 1 else 0.001)

    n = bench.calibrate("fake", step, 0.05)
    assert slept == [bench.SETTLE_S]
    assert 20 <= n <= 100, n  # 0.05 s / 1 ms to twice that (calibrate doubles n); a block of one step would be 1


def test_the_table_fits_in_100_columns(capsys):
    """The widest CPU table (the longest model names, every column filled, the conv reference too) stays within
    100 columns, as the rest of the CLI's output; the device is in the impl's name."""
    rows = [{"model": m, "batch": b, "dtype": "float32", "device": "cpu", "impl": impl, "median_ms": 329.6123,
             "ratio_vs_autograd": 12.345, "gflops": 0.006641, "peak_fraction": 0.999, "peak_live_mb": 1180.44,
             "peak_rss_mb": 1188.44, "torch_convs_ms": 5.905, "torch_convs_ratio": 1.0}
            for m, _, b in bench.MODELS for impl in ("manual-numpy", "manual-torch", "autograd")]
    bench.print_table(rows)
    out = capsys.readouterr().out
    assert "manual-numpy" in out and "1180.4" in out
    assert max(len(line) for line in out.splitlines()) <= 100, max(out.splitlines(), key=len)


_FAULTS = r'''
import resource, sys, numpy as np
from experiments import bench
if sys.argv[1] == "keep":
    assert bench.keep_freed_memory()
def once():
    a = [np.ones(1 << 21, np.float32) for _ in range(3)]  # three 8 MiB arrays, written, then freed
    del a
for _ in range(3):
    once()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    once()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and getrusage's minor faults")
def test_keep_freed_memory_stops_the_page_faults_of_fresh_arrays():
    """bench --malloc keep: freed memory stays in the process, so arrays made again after being freed take no
    new pages from the OS. The same loop (three 8 MiB arrays made and freed) in fresh processes: glibc's defaults
    trim the heap and fault ~2,000 pages back in each time (998 measured here); kept, none."""
    root = Path(__file__).resolve().parents[1]
    faults = {}
    for mode in ("default", "keep"):
        r = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, cwd=root, timeout=120)
        assert r.returncode == 0, r.stderr
        faults[mode] = float(r.stdout)
    assert faults["default"] > 500 and faults["keep"] < 5, faults


def test_the_ceiling_and_tensorboard_lines_fit_and_can_be_pasted():
    """The matmul ceiling with both dtypes was 111 columns; the closing line said `tensorboard --logdir ...`,
    which is not on the PATH when the venv is not activated (README runs `.venv/bin/backprop-lab`)."""
    import os
    import shlex
    import sys

    peaks = {dt: {"numpy": 293.8, "torch": 323.1, "cuda": 19106.0} for dt in ("float32", "float64")}
    text = bench.ceiling_line(2048, 7, peaks)
    assert max(map(len, text.splitlines())) <= 100, text
    assert " ".join(text.split()) == ("matmul ceiling (n=2048, best of 7 rounds, GFLOP/s): float32: numpy 294, "
                                      "torch 323, cuda 19106; float64: numpy 294, torch 323, cuda 19106")
    line = bench.tensorboard_line("my runs/bench/20260101-000000").strip()
    argv = shlex.split(line.split(":", 1)[1])
    here = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    assert argv[0] == (here if os.path.exists(here) else sys.executable), line
    assert argv[-2:] == ["--logdir", "my runs/bench/20260101-000000"]


def test_a_bench_run_folder_records_its_outcome(tmp_path):
    """`backprop-lab runs` listed a finished bench as "no outcome recorded (running, stopped, or not an
    experiment)" (and `runs --clean` kept a recent one as possibly running)."""
    from experiments import view

    root = bench.log_tensorboard(str(tmp_path), {"status": "ok", "machine": {}, "rows": [], "scaling": [],
                                                 "protocol": {"rounds": 3}})
    assert view.describe(root)[1] == "ok" and not view.maybe_running(root)
