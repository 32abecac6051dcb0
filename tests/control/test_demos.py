"""Minari demonstrations: recording, loading by path and by id, the held-out split, and bad input."""

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("minari")
pytest.importorskip("jax")  # minari.DataCollector's episode buffer needs it (minari[create])

from dipod.control.demos import (
    DemonstrationError,
    collect_demonstrations,
    load_demonstrations,
    noisy_action,
    require_minari,
    resolve_dataset,
    rollout_episodes,
    split_episodes,
)

ENV = "Pendulum-v1"
STEPS = 15


def _expert(obs: np.ndarray) -> np.ndarray:
    """A fixed, deterministic controller: torque against the angular velocity."""
    return np.array([-0.5 * obs[2]], dtype=np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "pendulum-medium-v0"
    summary = collect_demonstrations(
        ENV, _expert, episodes=4, out=out, action_noise=0.2, seed=3, max_episode_steps=STEPS
    )
    return out, summary


def test_collect_writes_a_minari_dataset_that_loads_back(dataset):
    out, summary = dataset
    assert (out / "data" / "main_data.hdf5").is_file() and (out / "data" / "metadata.json").is_file()
    assert summary.dataset_id == "pendulum-medium-v0" and summary.episodes == 4 and summary.steps == 4 * STEPS
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # staging removed
    demos = load_demonstrations(out, env_id=ENV)
    assert demos.obs.shape == (4 * STEPS, 3) and demos.actions.shape == (4 * STEPS, 1)
    assert demos.obs.dtype == np.float32 and demos.actions.dtype == np.float32
    np.testing.assert_array_equal(demos.episode, np.repeat(np.arange(4), STEPS))
    np.testing.assert_array_equal(demos.episode_lengths, [STEPS] * 4)
    np.testing.assert_allclose(demos.episode_returns.mean(), summary.return_mean, rtol=1e-6)
    assert demos.env_id == ENV and demos.dataset_id == "pendulum-medium-v0"
    assert np.all(np.abs(demos.actions) <= 2.0)  # clipped to the box


def test_stored_pairs_are_the_executed_ones(dataset):
    # Replay: the same seeds give the same episodes without the collector; each stored action is the expert's
    # action at the stored observation plus noise of the configured size (0.2 * half-width 2 = 0.4).
    out, summary = dataset
    demos = load_demonstrations(out)
    returns, steps = rollout_episodes(
        gym.make(ENV, max_episode_steps=STEPS), _expert, episodes=4, action_noise=0.2, seed=3
    )
    assert steps == summary.steps
    np.testing.assert_allclose(returns, demos.episode_returns, rtol=1e-5)
    residual = demos.actions[:, 0] - np.clip(-0.5 * demos.obs[:, 2], -2, 2)
    assert 0.25 < residual.std() < 0.6
    # Observations chain: the first observation of every episode is a reset, so angles lie on the unit circle.
    np.testing.assert_allclose(np.hypot(demos.obs[:, 0], demos.obs[:, 1]), 1.0, atol=1e-5)


def test_collection_is_deterministic(tmp_path):
    kw = {"episodes": 2, "action_noise": 0.3, "seed": 7, "max_episode_steps": 10}
    collect_demonstrations(ENV, _expert, out=tmp_path / "a", **kw)
    collect_demonstrations(ENV, _expert, out=tmp_path / "b", **kw)
    a, b = load_demonstrations(tmp_path / "a"), load_demonstrations(tmp_path / "b")
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.dataset_id == "dipod/a-v0"  # a name that is not a Minari id gets a namespaced one


def test_load_by_id_under_a_local_root(dataset, tmp_path, monkeypatch):
    out, _ = dataset
    root = tmp_path / "root"
    shutil.copytree(out, root / "dipod" / "pendulum" / "medium-v0")
    by_arg = load_demonstrations("dipod/pendulum/medium-v0", root=root, env_id=ENV)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    by_env = load_demonstrations("dipod/pendulum/medium-v0")
    np.testing.assert_array_equal(by_arg.actions, by_env.actions)
    # The data directory and a file inside it work as paths too.
    assert resolve_dataset(out / "data") == out / "data"
    assert resolve_dataset(out / "data" / "main_data.hdf5") == out / "data"


def test_split_by_episode():
    train, val = split_episodes(10, val_fraction=0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(10))
    np.testing.assert_array_equal(split_episodes(10, val_fraction=0.2, seed=0)[1], val)
    assert len(split_episodes(3, val_fraction=0.01, seed=0)[1]) == 1  # at least one held out
    assert len(split_episodes(1, val_fraction=0.5, seed=0)[1]) == 0  # never the only episode
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(4, val_fraction=1.0, seed=0)


def test_noisy_action_is_relative_to_the_half_width_and_clipped():
    rng = np.random.default_rng(0)
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 1.0])
    draws = np.stack([noisy_action(np.array([0.0, 0.5]), low, high, 0.1, rng) for _ in range(4000)])
    np.testing.assert_allclose(draws.std(0), [0.2, 0.05], rtol=0.1)
    assert noisy_action(np.array([5.0, -3.0]), low, high, 0.0, rng).tolist() == [2.0, 0.0]


# --------------------------------------------------------------------------- bad input


def test_missing_dataset_names_both_places(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded") as err:
        load_demonstrations(tmp_path / "nope", root=tmp_path / "root")
    assert str(tmp_path / "nope") in str(err.value) and str(tmp_path / "root") in str(err.value)


def test_shape_mismatch_names_the_file_and_shapes(dataset):
    out, _ = dataset
    with pytest.raises(DemonstrationError, match=r"observation shape \(3,\) does not match Hopper-v5's \(11,\)") as e:
        load_demonstrations(out, env_id="Hopper-v5")
    assert str(out / "data" / "metadata.json") in str(e.value)


def test_action_shape_mismatch(dataset, tmp_path):
    out, _ = dataset
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    meta_file = copy / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    space = json.loads(meta["action_space"])
    space["shape"] = [2]
    space["low"], space["high"] = [-2.0, -2.0], [2.0, 2.0]
    meta["action_space"] = json.dumps(space)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DemonstrationError, match=r"action shape \(2,\) does not match Pendulum-v1's \(1,\)"):
        load_demonstrations(copy, env_id=ENV)


def test_empty_and_truncated_datasets(dataset, tmp_path):
    out, _ = dataset
    empty = tmp_path / "empty"
    shutil.copytree(out, empty)
    meta_file = empty / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "total_episodes": 0, "total_steps": 0}))
    with pytest.raises(DemonstrationError, match="empty dataset"):
        load_demonstrations(empty)
    no_data = tmp_path / "no_data"
    shutil.copytree(out, no_data)
    (no_data / "data" / "main_data.hdf5").unlink()
    with pytest.raises(DemonstrationError, match=r"main_data\.hdf5 is missing"):
        load_demonstrations(no_data)


def test_collect_checks_before_any_step(tmp_path, dataset):
    out, _ = dataset
    with pytest.raises(FileExistsError, match=str(out)):
        collect_demonstrations(ENV, _expert, episodes=1, out=out)
    with pytest.raises(ValueError, match=r"shape \(2,\); Pendulum-v1 expects \(1,\)"):
        collect_demonstrations(ENV, lambda o: np.zeros(2), episodes=1, out=tmp_path / "x")
    with pytest.raises(ValueError, match="Malformed dataset ID"):
        collect_demonstrations(ENV, _expert, episodes=1, out=tmp_path / "y", dataset_id="bad id!")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_missing_minari_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "jax", None)  # an import of jax now raises ImportError
    with pytest.raises(ImportError, match=r"jax is missing\): pip install 'dipod\[control\]'"):
        require_minari(collector=True)
    require_minari()  # loading does not need jax
