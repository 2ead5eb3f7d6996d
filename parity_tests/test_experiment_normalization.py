"""The normalization experiment (quick profile) and xor's "no activation => one linear layer" claim."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import normalization, xor
from manual import nn


@pytest.fixture(scope="module")
def norm_run(tmp_path_factory):
    cfg = normalization.Config(device="cpu", quick=True, progress=False, logdir=str(tmp_path_factory.mktemp("runs")))
    return normalization.main(cfg)


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
def test_normalization_claims_hold(norm_run):
    bad = [c["claim"] for c in norm_run["claims"] if not c["holds"]]
    assert not bad, bad
    assert len(norm_run["claims"]) == 7
    assert norm_run["drift_ok"], norm_run["max_drift"]


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
def test_normalization_profiles_show_the_cure(norm_run):
    """The plain net's first layer gets < 1e-2 of its last layer's gradient; every cure stays within 10x,
    at init; the profiles have one entry per Linear layer, and both implementations agree at init."""
    for impl in ("manual", "torch"):
        r = norm_run["results"][impl]
        for k in normalization.NETS:
            assert len(r[k]["grad_norm_at_init"]) == normalization.Config.depth, k
        assert r["plain"]["first_over_last_init"] < 1e-2
        assert all(0.1 <= r[k]["first_over_last_init"] <= 10 for k in ("batchnorm", "layernorm", "residual"))
    m, t = norm_run["results"]["manual"], norm_run["results"]["torch"]
    for k in normalization.NETS:
        np.testing.assert_allclose(m[k]["grad_norm_at_init"], t[k]["grad_norm_at_init"], rtol=1e-10)


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
def test_batch_norm_eval_mode_is_independent_of_the_batch(norm_run):
    dep = norm_run["batchnorm_train_vs_eval"]["batch_dependence"]
    for impl in ("manual", "torch"):
        assert dep["eval"][impl] <= normalization.BATCH_TOL["float64"] and dep["train"][impl] > 1e-3


def test_normalization_nets_have_the_documented_layers():
    depth, width = 12, 8
    for kind in normalization.NETS:
        model = normalization.make_net(kind, depth, width)
        assert len(normalization.linear_names(model)) == depth, kind
    assert sum(isinstance(m, nn.BatchNorm1d) for _, m in normalization.make_net("batchnorm", depth, width).named_modules()) == depth - 1
    assert sum(isinstance(m, nn.Residual) for _, m in normalization.make_net("residual", depth, width).named_modules()) == 5


# -- xor: without an activation, hidden layers are useless ----------------------------------------

def test_two_linear_layers_fold_into_one():
    """W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2), on random weights, to float64 rounding, against
    an independent NumPy evaluation of the folded map."""
    rng = np.random.default_rng(0)
    stack = nn.Sequential(nn.Linear(2, 8, dtype="float64", generator=rng), nn.Linear(8, 1, dtype="float64", generator=rng))
    x = rng.uniform(-1, 2, size=(50, 2))
    w1, b1, w2, b2 = (stack.state_dict()[k] for k in ("0.weight", "0.bias", "1.weight", "1.bias"))
    folded = x @ (w2 @ w1).T + (w2 @ b1 + b2)
    np.testing.assert_allclose(stack(x), folded, rtol=0, atol=1e-14)
    tanh_stack = nn.Sequential(stack[0], nn.Tanh(), stack[1])  # with an activation, no such folding
    assert np.max(np.abs(tanh_stack(x) - folded)) > 1e-2


def test_xor_stacked_linear_claims(tmp_path):
    cfg = xor.Config(device="cpu", quick=True, progress=False, logdir=str(tmp_path), steps=120)
    out = xor.main(cfg)
    claims = {c["claim"]: c for c in out["claims"]}
    stacked = [c for k, c in claims.items() if k.startswith("two stacked Linear")]
    folded = [c for k, c in claims.items() if "W2 W1" in k]
    assert len(stacked) == len(folded) == 1 and stacked[0]["holds"] and folded[0]["holds"], out["claims"]
    for impl in ("manual", "torch"):
        r = out["results"][impl]
        assert r["stacked_linear_accuracy"] <= 0.75 and r["stacked_folded_gap"] <= xor.FOLD_TOL["float64"]


def test_folded_gap_sees_an_activation():
    """The claim's measurement is not vacuous: on a stack with a Tanh between the layers it is large."""
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Linear(2, 4, dtype="float64", generator=rng), nn.Linear(4, 1, dtype="float64", generator=rng))

    class _Twins:  # the two members folded_gap reads, for one implementation
        def forward(self, g):
            return {"manual": nn.Sequential(model[0], nn.Tanh(), model[1])(g)}

        def params(self, impl):
            return {k: np.asarray(v) for k, v in model.state_dict().items()}

    assert xor.folded_gap(_Twins())["manual"] > 1e-2
