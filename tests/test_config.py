"""Config errors name the dotted key, the value and where it came from."""

import pytest

from dipod.config import ConfigError, apply_overrides, dump_config
from dipod.runs.config import load_config, validate_config

GOOD = """\
domain: language
seed: 3
objective:
  name: fpo
  dipod_beta: 0.05
language:
  group_size: 4
"""


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_config_loads_and_round_trips(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), ["objective.clip_low=0.3", "train.steps=7"])
    assert cfg.objective.clip_low == 0.3 and cfg.train.steps == 7 and cfg.language.group_size == 4
    again = load_config(_write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_unknown_key_names_the_dotted_key_the_line_and_a_suggestion(tmp_path):
    path = _write(tmp_path, GOOD.replace("dipod_beta", "dipod_bta"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "unknown key `objective.dipod_bta` (line 5)" in msg
    assert "did you mean `objective.dipod_beta`?" in msg


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"`language.group_size` = 'many' \(line 7\)"):
        load_config(_write(tmp_path, GOOD.replace("group_size: 4", "group_size: many")))


def test_out_of_range_value_from_an_override(tmp_path):
    with pytest.raises(ConfigError, match=r"`objective.clip_low` = 1.5.*less than 1"):
        load_config(_write(tmp_path, GOOD), ["objective.clip_low=1.5"])
    with pytest.raises(ConfigError, match=r"`objective.dipod_beta` = -0.1.*greater than or equal to 0"):
        load_config(_write(tmp_path, GOOD), ["objective.dipod_beta=-0.1"])


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        validate_config({"domain": "language", "language": {}, "train": {"steps": 0, "stepz": 1}})
    assert "`train.steps` = 0" in str(err.value) and "unknown key `train.stepz`" in str(err.value)


def test_cross_field_errors():
    with pytest.raises(ConfigError, match="the `control` section is missing"):
        validate_config({"domain": "control"})
    with pytest.raises(
        ConfigError, match=r"objective.name = .spg. is not a control objective; choose one of: fpo, fpo_pp"
    ):
        validate_config({"domain": "control", "control": {}, "objective": {"name": "spg"}})
    with pytest.raises(ConfigError, match="`domain` = 'vision'"):
        validate_config({"domain": "vision"})


def test_bad_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["objective.clip_low"])
    with pytest.raises(ConfigError, match="`seed` is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(_write(tmp_path, "domain: [unclosed"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_overrides_create_sections_and_parse_yaml_values():
    data = apply_overrides({"domain": "language"}, ["language.group_size=8", "optim.betas=[0.9, 0.95]", "name=x"])
    cfg = validate_config(data)
    assert cfg.language.group_size == 8 and cfg.optim.betas == (0.9, 0.95) and cfg.name == "x"


def _control(control=None, **top):
    name = "ppo" if (control or {}).get("policy") == "gaussian" else "fpo_pp"
    data = {"domain": "control", "objective": {"name": name}, "control": control or {}}
    for key, value in top.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(data)


def test_seed_and_hidden_widths_must_be_valid():
    with pytest.raises(ConfigError, match=r"`seed` = -1: Input should be greater than or equal to 0"):
        _control(seed=-1)
    with pytest.raises(ConfigError, match=r"`control.actor_hidden.1` = 0: Input should be greater than 0"):
        _control({"actor_hidden": [64, 0]})
    with pytest.raises(ConfigError, match=r"`control.critic_hidden.0` = -3"):
        _control({"critic_hidden": [-3]})
    assert _control({"actor_hidden": []}).control.actor_hidden == ()  # a linear policy is fine


def test_control_section_errors_name_the_field_without_the_section_dump():
    with pytest.raises(ConfigError) as err:
        _control({"num_envs": 2, "rollout_steps": 8, "num_minibatches": 3})
    msg = str(err.value)
    assert "`control.num_minibatches` = 3" in msg and "must be divisible by control.num_minibatches = 3" in msg
    assert "'num_envs'" not in msg and "{" not in msg  # not the whole control dict
    with pytest.raises(ConfigError, match=r"`control.time_embed_dim` = 5: .*must be even"):
        _control({"time_embed_dim": 5})
    cfg = _control({"num_envs": 2, "rollout_steps": 1, "num_minibatches": 2})
    with pytest.raises(ValueError, match="must be divisible"):  # assignments are still checked
        cfg.control.num_envs = 3


GAUSSIAN = {"policy": "gaussian"}


@pytest.mark.parametrize(
    ("control", "top", "pattern"),
    [
        (GAUSSIAN, {"objective": {"dipod_beta": 0.0}, "drift": {"every": 5}}, r"drift.every = 5 .*control.policy"),
        (GAUSSIAN, {"objective": {"dipod_beta": 0.05}}, r"`objective.dipod_beta` = 0.05: .*less than or equal to 0"),
        (
            GAUSSIAN,
            {"objective": {"name": "fpo_pp", "dipod_beta": 0.0}},
            r"control.policy = 'gaussian' needs objective",
        ),
        ({}, {"objective": {"name": "ppo"}}, r"control.policy = 'flow' needs objective.name = fpo or fpo_pp"),
        (
            {**GAUSSIAN, "self_distill_iterations": 3},
            {"objective": {"dipod_beta": 0.0}},
            r"control.self_distill_iterations = 3 has no effect with control.policy = 'gaussian'",
        ),
        ({}, {"objective": {"clip_low": 0.1}}, r"objective.clip_high = 0.2 .*ignore objective.clip_low = 0.1"),
        ({}, {"objective": {"clip_high": 0.01}}, r"objective.clip_high = 0.01 .*ignore objective.clip_low = 0.2"),
        ({}, {"train": {"bf16": True}}, r"train.bf16 = True .*bf16 autocast applies to language models on CUDA"),
    ],
)
def test_control_settings_that_would_crash_or_be_ignored_are_rejected(control, top, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _control(control, **top)


def test_control_settings_that_are_used_pass():
    _control(GAUSSIAN, objective={"clip_low": 0.1, "clip_high": 0.3})  # PPO uses both clips
    _control({}, objective={"name": "fpo", "clip_low": 0.1, "clip_high": 0.3})  # so does FPO
    _control({}, objective={"clip_low": 0.01, "clip_high": 0.01}, drift={"every": 5})
    validate_config({"domain": "language", "language": {}, "train": {"bf16": True}})


def test_a_base_config_is_overridden_and_errors_inside_it_name_its_file_and_line(tmp_path):
    base = _write(tmp_path, GOOD)
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {base.name}\nname: child\nobjective:\n  dipod_beta: 0.01\n")
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.objective.dipod_beta == 0.01
    assert cfg.language.group_size == load_config(base).language.group_size  # inherited
    # another objective replaces the base's objective section whole
    spg = tmp_path / "spg.yaml"
    spg.write_text(f"base: {base.name}\nobjective:\n  name: spg\n")
    assert load_config(spg).objective.name == "spg"
    bad = _write(tmp_path, GOOD.replace("group_size: 4", "group_size: many"), name="bad.yaml")
    child.write_text("base: bad.yaml\nname: child\n")
    with pytest.raises(ConfigError, match=rf"`language.group_size` = 'many' \({bad}, line \d+\)"):
        load_config(child)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(loop)
    child.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml does not exist \(base of"):
        load_config(child)
