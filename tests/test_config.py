"""Config errors name the dotted key, the value and where it came from."""

import pytest

from dipod.config import ConfigError, RunConfig, apply_overrides, dump_config, load_config, validate_config

GOOD = """\
domain: language
seed: 3
objective:
  name: fpo
  dipod_beta: 0.05
language:
  group_size: 4
"""


def _write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
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
    cfg = RunConfig.model_validate(data)
    assert cfg.language.group_size == 8 and cfg.optim.betas == (0.9, 0.95) and cfg.name == "x"
