"""The claim record every experiment reports (experiments._lab.Claim): a claim holds only where it
was tested and held on every implementation tested, a claim about the pair has one verdict, and an
experiment cannot hand the results table anything else."""

from __future__ import annotations

import json

import pytest

from experiments import _lab
from experiments._lab import Claim


def test_each_tests_every_implementation_that_ran():
    c = Claim.each("accuracy >= 0.9", {"manual": 0.95, "torch": 0.85}, lambda a: a >= 0.9)
    assert (c.holds_manual, c.holds_torch, c.holds) == (True, False, False)
    assert (c.manual, c.torch) == (0.95, 0.85)  # the table shows the values by default
    both = Claim.each("accuracy >= 0.9", {"manual": 0.95, "torch": 0.91}, lambda a: a >= 0.9)
    assert both.holds is True


def test_each_leaves_an_implementation_that_did_not_run_untested():
    c = Claim.each("loss < 1", {"torch": 0.5}, lambda v: v < 1)  # --impl torch
    assert (c.holds_manual, c.holds_torch, c.holds, c.manual) == (None, True, True, None)
    nothing = Claim.each("loss < 1", {}, lambda v: v < 1)
    assert nothing.holds is False  # a claim tested nowhere is not a claim that holds


def test_each_shows_what_it_is_told_and_tests_the_values():
    c = Claim.each("flat", {"manual": (100.0, 0.0), "torch": (100.0, 1e-3)}, lambda v: v[1] == 0.0,
                   shown={"manual": "grad 0", "torch": "grad 1e-3"})
    assert (c.holds_manual, c.holds_torch, c.manual, c.torch) == (True, False, "grad 0", "grad 1e-3")


def test_each_refuses_values_not_keyed_by_implementation():
    with pytest.raises(ValueError, match=r"keyed by implementation .*'relu'"):
        Claim.each("a typo", {"manual": 1.0, "relu": 2.0}, bool)


def test_pair_has_one_verdict_shown_in_both_columns():
    c = Claim.pair("max |manual - torch| <= 1e-12", 3e-13, 3e-13 <= 1e-12)
    assert (c.holds, c.manual, c.torch, c.holds_manual, c.holds_torch) == (True, 3e-13, 3e-13, None, None)
    assert Claim.pair("max |manual - torch| <= 1e-12", 2e-9, 2e-9 <= 1e-12).holds is False


def test_as_dict_is_the_json_record():
    d = Claim.each("x", {"manual": 1, "torch": 2}, lambda v: v == 1).as_dict()
    assert d == {"claim": "x", "manual": 1, "torch": 2, "holds_manual": True, "holds_torch": False, "holds": False}
    assert json.loads(json.dumps(d)) == d


def test_result_accepts_only_claim_records(tmp_path):
    cfg = _lab.RunConfig(logdir=str(tmp_path), progress=False)

    class Log:  # what result() reads of a RunLogger
        root, experiment, status, notes = str(tmp_path), "x", "ok", []

    with pytest.raises(TypeError, match="claims must be Claim records"):
        _lab.result(cfg, Log(), {}, [{"claim": "x", "holds": True}])
    out = _lab.result(cfg, Log(), {}, [Claim.pair("agree", 0.0, True)])
    assert out["claims"] == [{"claim": "agree", "manual": 0.0, "torch": 0.0, "holds_manual": None,
                              "holds_torch": None, "holds": True}]
    assert json.loads((tmp_path / _lab.OUTCOME).read_text())["claims_hold"] == 1
