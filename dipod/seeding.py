"""One seeding scheme: named, independent random streams from ``SeedSequence([seed, stream, rank])``.

Every source of randomness in a run draws from its own stream: training prompts, the probe's prompts,
rollout noise, minibatch order, weight initialisation, environment seeds, ... Streams of one run never
share state, streams of runs with different seeds never coincide, and each process of a multi-process
run (``rank``) has its own. Seeding with ``seed + 1`` for a second stream, the old habit, makes run
s's second stream run s+1's first; spawning from a SeedSequence cannot.
"""

from __future__ import annotations

import numpy as np
import torch

STREAMS: dict[str, int] = {
    "init": 1,
    "prompts": 2,
    "rollout": 3,
    "update": 4,
    "probe": 5,
    "probe_prompts": 6,
    "eval": 7,
    "env": 8,
    "eval_env": 9,
}
"""Stream name -> its fixed number in the SeedSequence (never renumber: that would change every run)."""


def seed_sequence(seed: int, stream: str, rank: int = 0) -> np.random.SeedSequence:
    """The SeedSequence of stream ``stream`` of run ``seed`` on process ``rank``."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    if seed < 0 or rank < 0:
        raise ValueError(f"seed and rank must be >= 0, got seed={seed}, rank={rank}")
    return np.random.SeedSequence([seed, STREAMS[stream], rank])


def stream_seed(seed: int, stream: str, rank: int = 0) -> int:
    """A 63-bit integer seed for stream ``stream`` (for APIs that take an int, such as torch generators)."""
    return int(seed_sequence(seed, stream, rank).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def numpy_rng(seed: int, stream: str, rank: int = 0) -> np.random.Generator:
    """A numpy Generator on stream ``stream``."""
    return np.random.default_rng(seed_sequence(seed, stream, rank))


def torch_generator(seed: int, stream: str, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on ``device`` seeded from stream ``stream``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream, rank))


def int_seeds(seed: int, stream: str, count: int, rank: int = 0) -> list[int]:
    """``count`` independent 31-bit integer seeds from stream ``stream`` (e.g. one per sub-environment)."""
    return [int(s) for s in seed_sequence(seed, stream, rank).generate_state(count, dtype=np.uint32) >> 1]
