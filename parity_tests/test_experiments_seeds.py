"""The experiments' claims are not calibrated to seed 0: each randomised experiment, run again on
other seeds (quick profile, CPU), still has every claim holding for both implementations, with
the drift inside its tolerance. Seed 0 is what every other test uses; these are the seeds no
threshold was tuned on. Deterministic experiments (gradient-descent, backprop: the guide's own
numbers) are left out; their results do not depend on a seed."""

from __future__ import annotations

import pytest

from experiments import runner

# experiment -> seeds: two for the cheap ones, one for the slower (the suite's time budget)
SEEDS = {"xor": (1, 2), "circles": (1, 2), "stopping": (1, 2), "linear-regression": (1,), "digits": (1,),
         "landscape": (2,), "activations": (1,), "optimizers": (2,)}


@pytest.mark.slow
@pytest.mark.parametrize("name, seed", [(n, s) for n, seeds in SEEDS.items() for s in seeds],
                         ids=lambda v: str(v))
def test_claims_hold_on_other_seeds(name, seed, tmp_path):
    mod = runner.load(name)
    m = mod.main(mod.Config(quick=True, progress=False, device="cpu", seed=seed, logdir=str(tmp_path)))
    assert m["config"]["seed"] == seed
    assert m["status"] == "ok", m["notes"]
    failed = [(c["claim"], c["manual"], c["torch"]) for c in m["claims"] if not c["holds"]]
    assert not failed, f"{name}, seed {seed}: {failed}"
    assert all(c["holds_manual"] is not False and c["holds_torch"] is not False for c in m["claims"])
    assert m["drift_ok"] is not False, m["max_drift"]
