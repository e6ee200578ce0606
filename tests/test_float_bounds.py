"""FirstOrderBound (qsattn/float_bounds.py) against float32 evaluations whose error is known or measured."""
import copy

import pytest
import torch
import torch.nn as nn

from qsattn.engine.config import resolve
from qsattn.float_bounds import U, FirstOrderBound, assert_within_bound, gamma
from qsattn.state import create_state


def test_a_sum_gets_the_textbook_bound_and_an_exact_op_none():
    x = torch.rand(1000, dtype=torch.float64) * 2 - 1
    with FirstOrderBound() as tape:
        total = x.sum()
        copy = x.view(10, 100).transpose(0, 1).flatten()
    assert tape.bound(total) == pytest.approx(gamma(1000) * float(x.abs().sum()), rel=1e-12)
    assert len(tape.taps) == 1  # view / transpose / flatten round nothing
    assert tape.bound(copy[0]) == 0.0  # no rounding op led to it


@pytest.mark.float_paths
def test_a_float32_network_is_within_its_bound_of_the_float64_one():
    """One float32 evaluation lies within the worst-case first-order bound of the exact value, for
    every output functional tried, in G (convs, instance norm, resblocks, transposed-conv and
    anti-aliased resampling, tanh) and in D (leaky ReLU, anti-aliased downsampling) with an LSGAN loss."""
    torch.manual_seed(0)
    state = create_state(resolve({"method": "cut", "ngf": 8, "ndf": 8}))
    G, D = state.G, state.D
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for net in (G, D):
        with torch.no_grad():
            y32 = net(x)
        net64, x64 = copy.deepcopy(net).double(), x.double()
        with FirstOrderBound() as tape:
            y64 = net64(x64)
        for seed in range(3):
            s = torch.randn(y64.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            assert abs(float((s * (y32.double() - y64.detach())).sum())) <= tape.bound((s * y64).sum())
        distance, limit = assert_within_bound(y32, y64.detach(), y64, tape, type(net).__name__)
        assert 0 < distance <= limit / 2  # one evaluation: within one bound of the exact value
    ones = torch.ones_like(y64.detach())
    with FirstOrderBound() as tape:
        loss64 = nn.functional.mse_loss(net64(x64), ones)
    with torch.no_grad():
        loss32 = nn.functional.mse_loss(D(x), torch.ones_like(y32))
    assert abs(float(loss32) - float(loss64.detach())) <= tape.bound(loss64)


def test_the_probabilistic_bound_is_the_worst_case_one_shrunk_by_cancellation():
    x = torch.rand(4096, dtype=torch.float64)
    with FirstOrderBound() as tape:
        y = x * 3.0
    phi = y.sum()  # outside the tape: only the 4096 products round
    worst, prob = tape.bound(phi), tape.bound(phi, lam=8.0)
    # each product within 2u|y_i| (one rounding; 3.0 is exact but a Python float operand is counted)
    assert worst == pytest.approx(2 * U * float(y.sum()), rel=1e-9)
    assert prob == pytest.approx(8 * 2 * U * float(y.pow(2).sum()) ** 0.5, rel=1e-9)
    assert prob < worst / 5  # sqrt(4096) / 8 = 8 for equal terms
    with FirstOrderBound() as tape:
        total = x.sum()  # one rounded value: Hoeffding cannot shrink it below the worst case
    assert tape.bound(total, lam=8.0) == tape.bound(total)


def test_an_op_without_a_rule_or_a_float32_computation_is_refused():
    x = torch.rand(3, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="no float32 rounding rule for 'cumsum'"):
        with FirstOrderBound():
            x.cumsum(0)
    with pytest.raises(TypeError, match="needs a float64 computation"):
        with FirstOrderBound():
            x.float().sum()

