"""A standing table of bad command lines: paths, options and checkpoints (the library's own
probes are in test_misuse.py; the signal probes, which need a real process, in
test_runs_robust.py). Each probe must be refused before any work (exit 2, no run folder made,
no traceback) with a message that names the option, what was expected and what came."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from experiments import checkpoint, cli

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes anywhere: permission probes cannot fail


def fake_checkpoint(path, experiment="xor", **config):
    """A well-formed checkpoint file whose header says what we want (resume checks read these first)."""
    checkpoint.save(str(path), {"experiment": experiment, "config": {"steps": 40, **config}, "step": 3,
                                "current": None, "done": [], "w": np.ones(2)})
    return str(path)


def truncated_checkpoint(path):
    fake_checkpoint(path)
    blob = path.read_bytes()
    path.write_bytes(blob[:-7])
    return str(path)


def binary(path):
    path.write_bytes(b"ab\xff\xfe\x00 not text")
    return str(path)


def write(path, text="x"):
    path.write_text(text)
    return str(path)


def unwritable(path, folder=False):
    if folder:
        path.mkdir()
    else:
        path.write_text("{}")
    path.chmod(0o500 if folder else 0o400)
    return str(path)


# id -> (argv builder (tmp, logdir) -> list, expected message regex). Every probe runs against a
# fresh logdir, which must stay without a run folder.
PROBES = {
    "seed negative": (lambda t, L: ["run", "xor", "--seed", "-1"], r"argument --seed: expected an integer >= 0, got -1"),
    "seed not an integer": (lambda t, L: ["run", "xor", "--seed", "1.5"], r"argument --seed: expected an integer >= 0, got '1\.5'"),
    "steps zero": (lambda t, L: ["run", "xor", "--steps", "0"], r"argument --steps: expected an integer >= 1, got 0"),
    "lr zero": (lambda t, L: ["run", "xor", "--lr", "0"], r"argument --lr: expected a number > 0, got 0\.0"),
    "save-every negative": (lambda t, L: ["run", "xor", "--save-every", "-2"],
                            r"argument --save-every: expected an integer >= 0, got -2"),
    "logdir empty": (lambda t, L: ["run", "xor", "--logdir", ""], r"--logdir '': expected a folder path .*got an empty string"),
    "logdir empty (all)": (lambda t, L: ["all", "--only", "xor", "--logdir", ""], r"--logdir '': expected a folder path"),
    "logdir is a file": (lambda t, L: ["run", "xor", "--logdir", write(t / "f")], r"--logdir .*/f: cannot create it \(File exists\)"),
    "logdir under a file": (lambda t, L: ["run", "xor", "--logdir", os.path.join(write(t / "f"), "sub")],
                            r"--logdir .*/f/sub: cannot create it \(Not a directory\)"),
    "experiment folder is a file": (lambda t, L: ["run", "xor", "--logdir", L, "--save-every", "1"] if write(t / "runs" / "xor") else [],
                                    r"--logdir .*runs: the experiment folder .*runs/xor is not a folder"),
    "experiment folder is a file (all --only)": (lambda t, L: ["all", "--only", "xor", "--logdir", L] if write(t / "runs" / "xor") else [],
                                                 r"the experiment folder .*runs/xor is not a folder"),
    "json empty": (lambda t, L: ["run", "xor", "--json", ""], r"--json '': expected a file path, got an empty string"),
    "json is a folder": (lambda t, L: ["run", "xor", "--json", str(t)], r"--json .*: is a folder, expected a file path \(for example .*results\.json\)"),
    "json ends in /": (lambda t, L: ["run", "xor", "--json", str(t / "new") + "/"], r"--json .*new/: is a folder, expected a file path"),
    "json is a folder (all)": (lambda t, L: ["all", "--only", "xor", "--json", str(t)], r"--json .*: is a folder"),
    "json in a missing folder": (lambda t, L: ["run", "xor", "--json", str(t / "missing" / "r.json")],
                                 r"--json .*r\.json: the folder .*missing does not exist"),
    "resume a missing file": (lambda t, L: ["run", "xor", "--resume", str(t / "none.safetensors")],
                              r"checkpoint .*none\.safetensors: cannot read it \(No such file or directory\)"),
    "resume a folder": (lambda t, L: ["run", "xor", "--resume", str(t)], r"checkpoint .*: is a folder, expected a \.safetensors file"),
    "resume latest with none": (lambda t, L: ["run", "xor", "--resume", "latest"],
                                r"--resume latest: no checkpoint of xor under .*runs \(looked for .*; write some with --save-every N\)"),
    "resume a text file": (lambda t, L: ["run", "xor", "--resume", write(t / "notes.txt", "hello")],
                           r"checkpoint .*notes\.txt: 5 bytes, not a checkpoint"),
    "resume a truncated checkpoint": (lambda t, L: ["run", "xor", "--resume", truncated_checkpoint(t / "c.safetensors")],
                                      r"checkpoint .*c\.safetensors: truncated or padded \(expected \d+ bytes, the file has \d+\)"),
    "resume another experiment's": (lambda t, L: ["run", "xor", "--resume", fake_checkpoint(t / "d.safetensors", "digits")],
                                    r"checkpoint .*d\.safetensors: written by experiment 'digits', expected 'xor'"),
    "resume with a clashing option": (lambda t, L: ["run", "xor", "--steps", "300", "--resume", fake_checkpoint(t / "x.safetensors")],
                                      r"--resume .*: the run would not be the one checkpointed: --steps 300 \(the checkpoint has 40\)"),
    "resume on all": (lambda t, L: ["all", "--resume", "latest"], r"unrecognized arguments: --resume latest"),
    "nproc for a one-process experiment": (lambda t, L: ["run", "xor", "--nproc", "2"],
                                           r"--nproc 2: xor runs in one process \(its batch is the 4 points of XOR: "
                                           r"nothing worth splitting\); these run on several: .*digits, cnn.*ddp"),
    "nproc for normalization": (lambda t, L: ["run", "normalization", "--nproc", "2"],
                                r"--nproc 2: normalization runs in one process \(its claims are about batch norm over "
                                r"the whole batch; .*SyncBatchNorm.* runs on CUDA only\)"),
    "nproc zero": (lambda t, L: ["run", "ddp", "--nproc", "0"], r"argument --nproc: expected an integer >= 1, got 0"),
    "nproc not a number": (lambda t, L: ["run", "ddp", "--nproc", "two"], r"argument --nproc: expected an integer >= 1, got 'two'"),
    "nproc too many": (lambda t, L: ["run", "ddp", "--nproc", "65"], r"--nproc 65: expected at most 64 processes on one machine"),
    "nproc with resume": (lambda t, L: ["run", "ddp", "--nproc", "2", "--resume", "latest"],
                          r"--nproc 2 with --resume: the ddp experiment is a short check that writes no checkpoints"),
    "nproc on all too many": (lambda t, L: ["all", "--nproc", "65"], r"--nproc 65: expected at most 64 processes"),
    "text missing": (lambda t, L: ["run", "gpt", "--text", str(t / "none.txt")],
                     r"--text .*none\.txt: cannot read it \(No such file or directory\)"),
    "text is a folder": (lambda t, L: ["run", "gpt", "--text", str(t)], r"--text .*: is a folder, expected a UTF-8 text file"),
    "text not UTF-8": (lambda t, L: ["run", "gpt", "--text", binary(t / "b.dat")],
                       r"--text .*b\.dat: not UTF-8 text \(byte 2: invalid start byte\); expected a UTF-8 text file"),
    "n-head does not divide n-embd": (lambda t, L: ["run", "gpt", "--n-head", "3"],
                                      r"--n-embd 32 --n-head 3: expected --n-embd divisible by --n-head .*got a remainder of 2"),
    "n-embd not divisible (resized)": (lambda t, L: ["run", "gpt", "--n-embd", "30", "--n-head", "4"],
                                       r"--n-embd 30 --n-head 4: expected --n-embd divisible by --n-head"),
    "text empty": (lambda t, L: ["run", "gpt", "--text", write(t / "empty.txt", "")],
                   r"--text .*empty\.txt: expected at least 130 characters for --block-size 64 .*got 0"),
    "text of 2 characters": (lambda t, L: ["run", "gpt", "--text", write(t / "ab.txt", "ab")],
                             r"--text .*ab\.txt: expected at least 130 characters .*got 2"),
    "text one short of 2 x (block + 1)": (lambda t, L: ["run", "gpt", "--block-size", "4", "--text", write(t / "s.txt", "é" * 9)],
                                          r"--text .*s\.txt: expected at least 10 characters for --block-size 4 .*got 9"),
    "digits 1: one prompt": (lambda t, L: ["run", "gpt", "--digits", "1"],
                             r"--digits 1 --length 6: 1\*\*6 = 1 possible prompts, expected at least 5 \(a fifth"),
    "digits 2 length 2: four prompts": (lambda t, L: ["run", "gpt", "--digits", "2", "--length", "2"],
                                        r"--digits 2 --length 2: 2\*\*2 = 4 possible prompts, expected at least 5"),
    "digits 1 under --quick": (lambda t, L: ["run", "gpt", "--quick", "--digits", "1", "--length", "9"],
                               r"--digits 1 --length 4 \(--quick: at most 5 digits, length 4\): 1\*\*4 = 1 possible prompts"),
    "dropout above 1": (lambda t, L: ["run", "gpt", "--dropout", "1.5"], r"argument --dropout: expected a probability in \[0, 1\), got 1\.5"),
    "dropout negative": (lambda t, L: ["run", "gpt", "--dropout", "-0.1"], r"argument --dropout: expected a probability in \[0, 1\), got -0\.1"),
    "weight-decay negative": (lambda t, L: ["run", "gpt", "--weight-decay", "-1"], r"argument --weight-decay: expected a number >= 0, got -1\.0"),
    "grad-clip negative": (lambda t, L: ["run", "gpt", "--grad-clip", "-1"], r"argument --grad-clip: expected a number > 0, got -1\.0"),
    "test-fraction 1": (lambda t, L: ["run", "digits", "--test-fraction", "1"], r"argument --test-fraction: expected a number in \(0, 1\), got 1\.0"),
    "json name too long": (lambda t, L: ["run", "xor", "--json", str(t / ("a" * 300 + ".json"))],
                           r"--json .*\.json: its name is 305 bytes, longer than the 255 its folder takes"),
    "bench --rounds 0": (lambda t, L: ["bench", "--rounds", "0"], r"argument --rounds: expected an integer >= 1, got 0"),
    "bench --rounds negative": (lambda t, L: ["bench", "--rounds", "-3"], r"argument --rounds: expected an integer >= 1, got -3"),
    "lr inf": (lambda t, L: ["run", "xor", "--lr", "inf"], r"argument --lr: expected a number > 0, got inf"),
    "lr 1e400 (overflows to inf)": (lambda t, L: ["run", "xor", "--lr", "1e400"], r"argument --lr: expected a number > 0, got inf"),
    "weight-decay inf": (lambda t, L: ["run", "gpt", "--weight-decay", "inf"], r"argument --weight-decay: expected a number >= 0, got inf"),
    "a plain float nan": (lambda t, L: ["run", "linear-regression", "--noise", "nan"],
                          r"argument --noise: expected a finite number, got nan"),
    "lrs negative": (lambda t, L: ["run", "gradient-descent", "--lrs", "0.1", "-1"], r"argument --lrs: expected a number > 0, got -1\.0"),
    "lrs nan": (lambda t, L: ["run", "gradient-descent", "--lrs", "nan"], r"argument --lrs: expected a number > 0, got nan"),
    "text of one repeated character": (lambda t, L: ["run", "gpt", "--text", write(t / "a.txt", "a" * 500)],
                                       r"--text .*a\.txt: expected at least 2 distinct characters \(one has nothing to "
                                       r"predict: ln\(1\) = 0\), got 1: 'a'"),
    "runs --keep without --clean": (lambda t, L: ["runs", "--keep", "2"], r"--keep 2: only with --clean"),
    "runs --dry-run without --clean": (lambda t, L: ["runs", "--dry-run"], r"--dry-run: only with --clean"),
    "runs --logdir a file": (lambda t, L: ["runs", "--logdir", write(t / "notes.txt")],
                             r"--logdir '.*notes\.txt': expected a folder of runs, got a file"),
    "runs --logdir empty": (lambda t, L: ["runs", "--logdir", ""], r"--logdir '': expected a folder of runs, got an empty path"),
    "view --port negative": (lambda t, L: ["view", "--port", "-1"],
                             r"argument --port: expected a port in 0\.\.65535 \(0: a free one\), got -1"),
    "view --port above 65535": (lambda t, L: ["view", "--port", "65536"], r"argument --port: expected a port in 0\.\.65535"),
}
if not __import__("torch").cuda.is_available():  # a usage error as run's, all's and verify's: stderr, exit 2
    PROBES.update({
        "bench --device cuda without a GPU": (lambda t, L: ["bench", "--device", "cuda"],
                                              r"backprop-lab bench: error: --device cuda: torch sees no CUDA GPU"),
    })
if not ROOT_USER:
    PROBES.update({
        "experiment folder not writable": (lambda t, L: ["run", "xor", "--logdir", L] if unwritable(t / "runs" / "xor", folder=True) else [],
                                           r"the experiment folder .*runs/xor is not writable"),
        "json file not writable": (lambda t, L: ["run", "xor", "--json", unwritable(t / "r.json")],
                                   r"--json .*r\.json: the file exists and is not writable"),
    })


def unwrap(err):
    """The message as one line: errors wrap at 100 columns, continued with a 2-space indent."""
    return re.sub(r"\n  (?=\S)", " ", err)


@pytest.mark.parametrize("name", list(PROBES))
def test_bad_command_line_is_refused_before_any_work(name, tmp_path, capsys):
    build, pattern = PROBES[name]
    logdir = tmp_path / "runs"
    logdir.mkdir()
    argv = build(tmp_path, str(logdir))
    if "--logdir" not in argv:
        argv += ["--logdir", str(logdir)]
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--no-progress"] if argv[0] == "run" else argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert re.search(pattern, unwrap(err)), f"{name}: expected /{pattern}/ in:\n{err}"
    assert "Traceback" not in err
    assert all(len(line) <= 100 or " " not in line.strip() for line in err.splitlines()), f"{name}: over 100 columns:\n{err}"
    made = [d for d in logdir.rglob("*") if d.is_dir()]
    assert not made, f"{name}: a run started before the refusal: {made}"


def test_the_table_is_large_enough():
    assert len(PROBES) >= 15


@pytest.mark.parametrize("where", ["empty", "missing"])
def test_view_with_no_runs_at_all_exits_2_without_starting_tensorboard(tmp_path, capsys, monkeypatch, where):
    """`view` with no NAME and no runs under --logdir (an empty or a missing folder): a clear error,
    not TensorBoard's own 'A logdir or db must be specified' from an empty --logdir_spec."""
    import subprocess

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("TensorBoard was started"))
    logdir = tmp_path if where == "empty" else tmp_path / "nowhere"
    assert cli.main(["view", "--logdir", str(logdir)]) == 2
    err = unwrap(capsys.readouterr().err)
    assert re.search(rf"no runs under {re.escape(str(logdir))}.*backprop-lab run xor", err), err
    assert "Traceback" not in err


def test_gpt_text_of_the_minimum_length_and_a_huge_heldout_build_their_tasks(tmp_path):
    """The shortest text check_config lets through (2 x (block + 1) characters) makes a task with training
    and held-out windows; --heldout beyond a fifth of the prompts holds out at most a fifth (drawn too:
    training draws that hit a held-out prompt are redrawn, which never ended with every prompt held out)."""
    from experiments import gpt

    block = 4
    task = gpt.TextTask(write(tmp_path / "t.txt", "abcab\ncaba"), block, 256)  # 2 x (4 + 1) = 10 characters
    x, y = task.batch(np.random.default_rng(0), 3)
    assert x.shape == y.shape == (3, block) and task.test.shape[1] == block + 1
    space = 10 ** 6  # the default length 6 of 10 digits: drawn, not enumerated
    task = gpt.SortTask(6, 10, 10 ** 7, np.random.default_rng(0))
    assert 0 < len(task.test) <= space // 5
    assert task.batch(np.random.default_rng(1), 64)[0].shape == (64, 12)


def test_view_on_a_port_in_use_exits_2_without_starting_tensorboard(tmp_path, capsys, monkeypatch):
    """A taken --port was TensorBoard's own error, exit 1: a bad value of an option, exit 2, before it starts."""
    import socket
    import subprocess

    from experiments import view

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("TensorBoard was started"))
    monkeypatch.setattr(view, "find_runs", lambda logdir: {"xor": [str(tmp_path / "xor" / "run")]})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            cli.main(["view", "--logdir", str(tmp_path), "--port", str(port)])
    err = unwrap(capsys.readouterr().err)
    assert e.value.code == 2, err
    assert re.search(rf"--port {port}: in use on 127\.0\.0\.1; leave --port out for a free one", err), err
    assert "Traceback" not in err


def test_all_only_with_a_repeated_name_runs_it_once(tmp_path, monkeypatch, capsys):
    """`all --only xor xor` ran xor twice (two run folders, the first one's results dropped from the
    table and the JSON, "1 experiments"): a name given twice is run once, as verify --only does."""
    from experiments import runner

    ran = []

    def run_one(mod, cfg):
        ran.append(mod.NAME)
        return {"status": "ok", "claims": [], "config": {}, "notes": []}

    monkeypatch.setattr(runner, "run_one", run_one)
    assert cli.main(["all", "--only", "xor", "landscape", "xor", "--no-progress", "--logdir", str(tmp_path)]) == 0
    assert ran == ["xor", "landscape"]
    assert "2 experiments in" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a FIFO stands for /dev/stdout, /dev/null")
def test_json_to_a_pipe_or_device_is_written_into_it_not_replaced(tmp_path):
    """`--json /dev/stdout` or `/dev/null`: run and all wrote a temporary file beside it and renamed it over
    the path, which (as root) replaced the device node or the link with a regular file. A link, a device or a
    FIFO is written into; a FIFO stands in for the devices here."""
    import json
    import stat

    from experiments import runner

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so that opening it to write does not block
    try:
        assert cli.check_paths(types_namespace(json=str(fifo))) is None
        assert runner.write_json(str(fifo), {"xor": {"status": "ok"}})
        assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a file"
        assert json.loads(os.read(reader, 1 << 16)) == {"xor": {"status": "ok"}}
    finally:
        os.close(reader)
    (tmp_path / "kept").mkdir()  # a link (as /dev/stdout is) stays a link; the file it names gets the JSON
    (tmp_path / "r.json").symlink_to(tmp_path / "kept" / "r.json")
    assert runner.write_json(str(tmp_path / "r.json"), {"xor": {}})
    assert (tmp_path / "r.json").is_symlink() and json.loads((tmp_path / "kept" / "r.json").read_text()) == {"xor": {}}


def types_namespace(**kw):
    import argparse

    return argparse.Namespace(**kw)


def test_the_view_hint_after_a_run_can_be_pasted_and_names_where_the_run_is(tmp_path, monkeypatch, capsys):
    """The closing `view ... --logdir L` hint: a logdir with a space was printed unquoted (pasted, it is two
    arguments), and a run resumed with another --logdir named that one, where the run is not."""
    import shlex

    from experiments import runner

    logdir = tmp_path / "my runs"
    run_dir = logdir / "xor" / "20260101-000000_quick"

    def run_one(mod, cfg):
        return {"status": "ok", "claims": [], "config": {}, "notes": [], "logdir": str(run_dir)}

    monkeypatch.setattr(runner, "run_one", run_one)
    elsewhere = tmp_path / "elsewhere"
    assert cli.main(["run", "xor", "--no-progress", "--logdir", str(elsewhere)]) == 0  # as a resumed run's folder
    out = capsys.readouterr().out
    (line,) = [t for t in out.splitlines() if t.startswith("view the latest runs:")]
    assert shlex.split(line.split(":", 1)[1])[-3:] == ["xor", "--logdir", str(logdir)], line
    assert f"--logdir {shlex.quote(str(logdir))}" in out


def test_json_with_a_long_name_that_the_folder_takes_is_written(tmp_path):
    """A --json name of 250 bytes is legal, but the temporary file beside it (".NAME.XXXXXXXX.tmp") was longer
    than 255: the run ended with exit 74 after all its work."""
    from experiments import runner

    path = tmp_path / ("r" * 245 + ".json")
    assert cli.check_paths(types_namespace(json=str(path))) is None
    assert runner.write_json(str(path), {"xor": {}}) and path.read_text().strip().startswith("{")
