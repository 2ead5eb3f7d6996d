"""What the generic registry tests cannot express for the normalization, dropout and embedding modules:
dropout's mask (drawn from an explicit generator, reused by backward), batch norm's running
statistics over many steps (momentum None: torch's cumulative average), train()/eval(), state_dict
names and order, the embedding's padding row, and the modules' bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import manual.functional as MF
from manual import _backend as B
from manual import nn
from torch_ref import twin

from conftest import DEVICE_OF

CPU = ["numpy", "torch-cpu"]


@pytest.mark.parametrize("backend", CPU)
def test_dropout_module_draws_from_its_generator_and_backward_reuses_the_mask(backend):
    dev = DEVICE_OF[backend]
    x = B.place(np.random.default_rng(0).normal(size=(40, 50)), dev, "float64")
    g = B.place(np.random.default_rng(1).normal(size=(40, 50)), dev, "float64")
    p = 0.3
    drop = nn.Dropout(p, generator=np.random.default_rng(7))
    y = drop(x)
    keep = np.random.default_rng(7).random((40, 50)) >= p  # the same draw, independently
    np.testing.assert_array_equal(B.to_numpy(y), B.to_numpy(x) * keep * (1 / (1 - p)))
    np.testing.assert_array_equal(B.to_numpy(drop.backward(g)), B.to_numpy(g) * keep * (1 / (1 - p)))
    kept = keep.mean()  # 2000 Bernoulli(0.7) draws: 5 standard deviations is 0.05
    assert abs(kept - (1 - p)) < 0.05
    drop.eval()
    np.testing.assert_array_equal(B.to_numpy(drop(x)), B.to_numpy(x))
    np.testing.assert_array_equal(B.to_numpy(drop.backward(g)), B.to_numpy(g))


def test_dropout_p1_drops_everything_and_p0_nothing():
    x = np.random.default_rng(0).normal(size=(3, 4))
    assert np.all(nn.Dropout(1.0, generator=np.random.default_rng(0))(x) == 0)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    np.testing.assert_array_equal(MF.dropout(x, 1.0, generator=np.random.default_rng(0)), np.zeros_like(x))
    torch_zero = torch.nn.functional.dropout(torch.tensor(x), 1.0)  # torch's semantics for p = 1
    assert torch.all(torch_zero == 0)


@pytest.mark.parametrize("momentum", [0.1, None, 0.5])
@pytest.mark.parametrize("backend", CPU)
def test_batch_norm_running_statistics_over_steps_match_torch(momentum, backend):
    """Five training forwards, then eval: running mean, unbiased running var, num_batches_tracked and
    the eval-mode output equal torch's (momentum None: the cumulative average 1/n)."""
    dev = DEVICE_OF[backend]
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm2d(3, momentum=momentum).to(device=dev, dtype="float64")
    tbn = twin(bn)
    for _ in range(5):
        x = rng.normal(2.0, 3.0, size=(4, 3, 2, 5))
        bn(B.place(x, dev, "float64"))
        tbn(torch.tensor(x))
    sd, tsd = bn.state_dict(), tbn.state_dict()
    assert list(sd) == list(tsd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    for k in sd:
        np.testing.assert_allclose(B.to_numpy(sd[k]), tsd[k].numpy(), rtol=1e-14, atol=0, err_msg=k)
    assert int(B.to_numpy(sd["num_batches_tracked"])) == 5 and B.to_numpy(sd["num_batches_tracked"]).dtype == np.int64
    bn.eval()
    tbn.eval()
    x = rng.normal(size=(2, 3, 2, 2))
    np.testing.assert_allclose(B.to_numpy(bn(B.place(x, dev, "float64"))), tbn(torch.tensor(x)).detach().numpy(),
                               rtol=1e-14, atol=1e-15)


def test_state_dict_order_is_torchs_with_buffers():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Residual(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))),
                          nn.Embedding(4, 3))
    assert list(model.state_dict()) == list(twin(model).state_dict())


def test_batch_norm_module_refuses_one_value_per_channel_in_training_only():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3, .*expected more than 1 value per channel when training.*\(1, 3\)"):
        bn(np.zeros((1, 3), dtype=np.float32))
    assert int(bn.num_batches_tracked) == 0, "a refused forward must not count a batch"
    bn.eval()
    assert bn(np.zeros((1, 3), dtype=np.float32)).shape == (1, 3)  # eval: running statistics, fine (as torch)


@pytest.mark.parametrize("make, x, exc, match", [
    (lambda: nn.BatchNorm2d(3), np.zeros((2, 3, 4), np.float32), ValueError, r"expected 4D input, got 3D input"),
    (lambda: nn.BatchNorm1d(3), np.zeros((2, 4), np.float32), ValueError, r"expected input with 3 channels in dimension 1"),
    (lambda: nn.LayerNorm(5), np.zeros((2, 4), np.float32), ValueError, r"normalized_shape \(5,\)"),
    (lambda: nn.GroupNorm(2, 4), np.zeros((2, 6), np.float32), ValueError, r"expected input of shape \(N, 4, \*\)"),
    (lambda: nn.Embedding(5, 2), np.array([0, 5]), IndexError, r"expected indices in \[0, 5\).*got index 5"),
    (lambda: nn.Embedding(5, 2), np.array([0.0, 1.0]), TypeError, r"expected input of integer indices"),
    (lambda: nn.LayerNorm(4), np.zeros((2, 4), np.float64), TypeError, r"expected input of dtype float32"),
])
def test_module_bad_inputs(make, x, exc, match):
    with pytest.raises(exc, match=match):
        make()(x)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: nn.GroupNorm(4, 6), ValueError, r"num_channels divisible by num_groups"),
    (lambda: nn.Dropout(1.5), ValueError, r"p in \[0, 1\], got 1.5"),
    (lambda: nn.Embedding(5, 2, padding_idx=5), ValueError, r"padding_idx None or an integer in \[-5, 5\)"),
    (lambda: nn.BatchNorm1d(0), ValueError, r"num_features to be an integer >= 1, got 0"),
    (lambda: nn.BatchNorm1d(3, momentum=2.0), ValueError, r"momentum None .*or a number in \[0, 1\], got 2.0"),
    (lambda: nn.Residual(lambda x: x), TypeError, r"expected a manual.nn.Module"),
])
def test_module_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_embedding_padding_row_is_zero_and_gets_no_gradient():
    emb = nn.Embedding(6, 3, padding_idx=-2, generator=np.random.default_rng(0))
    assert emb.padding_idx == 4 and np.all(emb.weight.data[4] == 0) and np.all(emb.weight.data[:4] != 0)
    idx = np.array([[4, 1, 4], [1, 1, 0]])
    out = emb(idx)
    assert emb.backward(np.ones_like(out) * 2.0) is None  # indices: no gradient
    grad = emb.weight.grad
    assert np.all(grad[4] == 0) and np.all(grad[1] == 6.0) and np.all(grad[0] == 2.0) and np.all(grad[2:4] == 0)


def test_residual_gradient_is_the_sum_of_both_paths():
    """d(x + f(x))/dx = g + f'(x)^T g: against the block's own backward, added by hand."""
    rng = np.random.default_rng(0)
    block = nn.Sequential(nn.Linear(4, 4, dtype="float64", generator=rng), nn.Tanh())
    res = nn.Residual(block)
    x, g = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    res(x)
    got = res.backward(g)
    block(x)
    np.testing.assert_allclose(got, g + block.backward(g), rtol=1e-15, atol=0)
