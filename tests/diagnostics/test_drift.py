"""Domain-free drift quantities: gradient cosine, flat gradients, and the monitor's schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dipod.diagnostics.drift import DriftMonitor, flat_grad, grad_cosine


def test_grad_cosine_extremes() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    v = torch.nn.Parameter(torch.tensor([3.0]))
    loss = (w**2).sum() + v.sum()
    assert grad_cosine(loss, 2 * loss, [w, v]) == pytest.approx(1.0, abs=1e-9)
    loss = (w**2).sum() + v.sum()
    assert grad_cosine(loss, -loss, [w, v]) == pytest.approx(-1.0, abs=1e-9)
    assert grad_cosine(w.sum(), v.sum(), [w, v]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(grad_cosine(w.sum(), 0.0 * v.sum(), [w, v]))  # a zero gradient has no direction
    tiny = 1e-9 * (w**2).sum()
    assert grad_cosine(tiny, 1e-9 * tiny, [w, v]) == pytest.approx(1.0)  # tiny gradients keep their direction
    assert w.grad is None and v.grad is None  # the probe never writes .grad


def test_flat_grad_zero_for_unused() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    v = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(flat_grad((3 * w).sum(), [w, v]), torch.tensor([3.0, 3.0, 0.0, 0.0]))


def test_monitor_schedule_and_time() -> None:
    calls = itertools.count()
    monitor = DriftMonitor(lambda: {"drift/gap": float(next(calls))}, every=3)
    outs = [monitor.maybe_probe(step) for step in range(1, 10)]
    assert [bool(o) for o in outs] == [False, False, True, False, False, True, False, False, True]
    assert outs[2]["drift/gap"] == 0.0 and outs[8]["drift/gap"] == 2.0
    assert monitor.calls == 3 and monitor.seconds >= 0.0 and "drift/seconds" in outs[2]
    assert not any(DriftMonitor(lambda: {}, every=0).maybe_probe(s) for s in range(1, 5))
    with pytest.raises(ValueError):
        DriftMonitor(lambda: {}, every=-1)


