"""Named random streams: independent across streams, seeds and ranks; repeatable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dipod.seeding import STREAMS, int_seeds, numpy_rng, seed_sequence, stream_seed, torch_generator


def test_no_two_named_streams_of_seeds_0_to_9_coincide():
    keys = [(seed, stream, rank) for seed in range(10) for stream in STREAMS for rank in range(2)]
    states = {key: tuple(seed_sequence(*key).generate_state(4)) for key in keys}
    assert len(set(states.values())) == len(keys)  # 128-bit states: no two streams share one
    draws = {key: tuple(numpy_rng(*key).integers(0, 2**62, size=3)) for key in keys}
    assert len(set(draws.values())) == len(keys)
    ints = {key: stream_seed(*key) for key in keys}
    assert len(set(ints.values())) == len(keys)  # the torch generators' seeds too


def test_the_old_habit_of_seed_plus_one_is_what_the_streams_avoid():
    # Run s's second stream used to be default_rng(s + 1), i.e. run s+1's first stream.
    assert np.random.default_rng(3 + 1).integers(1 << 30) == np.random.default_rng(4).integers(1 << 30)
    assert numpy_rng(3, "probe_prompts").integers(1 << 30) != numpy_rng(4, "prompts").integers(1 << 30)


def test_streams_repeat_and_reject_unknown_names():
    a = torch.rand(5, generator=torch_generator(7, "rollout"))
    assert torch.equal(a, torch.rand(5, generator=torch_generator(7, "rollout")))
    assert not torch.equal(a, torch.rand(5, generator=torch_generator(7, "rollout", rank=1)))
    assert int_seeds(7, "env", 4) == int_seeds(7, "env", 4) and len(set(int_seeds(7, "env", 16))) == 16
    with pytest.raises(ValueError, match="unknown random stream 'nope'"):
        seed_sequence(0, "nope")
    with pytest.raises(ValueError, match="must be >= 0"):
        seed_sequence(-1, "init")
