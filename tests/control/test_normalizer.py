"""Running observation normaliser: Welford/Chan merges against numpy over everything seen."""

import numpy as np
import torch

from dipod.control.normalizer import RunningNorm


def test_statistics_match_numpy_over_uneven_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=[1.0, -3.0, 10.0], scale=[0.5, 2.0, 4.0], size=(n, 3)) for n in (1, 7, 64, 3)]
    norm = RunningNorm(3)
    for b in batches:
        norm.update(torch.as_tensor(b, dtype=torch.float32))
    seen = np.concatenate(batches).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(norm.mean.numpy(), seen.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(norm.var.numpy(), seen.var(0), rtol=1e-10, atol=1e-10)
    assert norm.count.item() == seen.shape[0]


def test_normalised_output_and_state_dict_round_trip():
    rng = np.random.default_rng(1)
    data = torch.as_tensor(rng.normal(5.0, 3.0, size=(256, 2)), dtype=torch.float32)
    norm = RunningNorm(2)
    norm.update(data)
    z = norm(data)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    restored = RunningNorm(2)
    restored.load_state_dict(norm.state_dict())
    assert torch.equal(restored(data), z)


def test_outliers_are_clipped():
    norm = RunningNorm(1, clip=5.0)
    norm.update(torch.randn(1000, 1, generator=torch.Generator().manual_seed(0)))
    assert norm(torch.tensor([[1e6]])).item() == 5.0
