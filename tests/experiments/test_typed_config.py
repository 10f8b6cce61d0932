"""Typed configs: each option declared once (a frozen dataclass field with its
default, rule and help), the ConfigDict of `get_config` derived from it, one
validation that returns the typed tree, and options that the chosen algorithm
ignores refused instead of silently dropped."""
import dataclasses
import os

import ml_collections
import pytest

from alignax.experiments.runtime import config_files, config_schema, launch, model_setup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "alignax", "experiments", "configs")
NAMES = ("grpo", "exsearch", "dro", "moat", "cau_unlearn")


def _file(name):
  return os.path.join(CONFIGS, name + ".py")


def _config(name, preset="tiny", **overrides):
  c = config_files.load_config_file(f"{_file(name)}:{preset}")
  c.update_from_flattened_dict(overrides)
  return c


@pytest.mark.parametrize("name", NAMES)
def test_get_config_is_the_dataclass_defaults(name):
  module = config_schema._config_module(_file(name))
  c = config_files.load_config_file(f"{_file(name)}:default")
  assert isinstance(c, ml_collections.ConfigDict)
  assert c.to_dict() == module.Config().to_dict()
  # Every leaf option has a rule and a type; the help is where the option is.
  options = config_schema.options_of(module.Config)
  assert options and all(isinstance(rule, config_schema.Rule)
                         for _, rule, _ in options.values())


@pytest.mark.parametrize("name", NAMES)
def test_validate_returns_the_frozen_typed_tree(name):
  c = _config(name)
  typed = config_schema.validate_config(c, _file(name))
  assert isinstance(typed, config_schema.Section)
  assert typed.to_dict() == c.to_dict()  # what config.json stores
  assert typed.seed == c.seed and typed["seed"] == c.seed
  with pytest.raises(dataclasses.FrozenInstanceError):
    typed.seed = 1  # pytype: disable=not-writable
  # An already typed config validates to itself (run() may be given either).
  assert config_schema.validate_config(typed, _file(name)) == typed


def test_typed_sections_read_as_the_configdict_did():
  typed = config_schema.validate_config(_config("grpo"), _file("grpo"))
  assert typed.train.steps == 12 and typed["train"]["steps"] == 12
  assert typed.task.get("reverse").max_len == 4 and typed.task.get("sorting", {}) == {}
  assert dict(**typed.task.reverse) == {"min_len": 3, "max_len": 4, "eval_fraction": 0.1}
  assert typed.loss.delta is None and typed.train.share_prompt is None
  assert isinstance(typed.model, model_setup.BuiltinModel)
  assert isinstance(typed.lora, model_setup.LoraConfig)


def test_placeholders_can_be_set_from_the_command_line():
  c = _config("grpo")
  c.loss.delta = 2.0  # an Optional[float] option starts as placeholder(float)
  c.train.share_prompt = False
  typed = config_schema.validate_config(c, _file("grpo"))
  assert typed.loss.delta == 2.0 and typed.train.share_prompt is False


def test_unknown_and_missing_keys_are_errors():
  c = _config("grpo")
  with c.unlocked():
    c.train.stepz = 3
  del c.eval["size"]
  with pytest.raises(config_schema.ConfigError) as e:
    config_schema.validate_config(c, _file("grpo"))
  msg = str(e.value)
  assert "config.train.stepz is not an option; did you mean config.train.steps?" in msg, msg
  assert "config.eval.size is missing" in msg, msg


def test_shared_sections_are_declared_once():
  for name in ("grpo", "exsearch", "dro", "moat"):
    module = config_schema._config_module(_file(name))
    fields = {f.name: f for f in dataclasses.fields(module.Config)}
    assert isinstance(fields["lora"].default_factory(), model_setup.LoraConfig), name
    assert isinstance(fields["model"].default_factory(), model_setup.Precision), name
    assert isinstance(fields["train"].default_factory(), model_setup.Remat), name


# ------------------------------------------- options the algorithm ignores
IGNORED = [
    # (overrides, words of the one error)
    ({"loss.advantage": "rloo", "loss.scale_rewards": "none"},
     ["config.loss.scale_rewards='none' does not apply to config.loss.advantage='rloo'"]),
    ({"loss.advantage": "dr_grpo", "loss.scale_rewards": "batch"},
     ["config.loss.scale_rewards='batch'", "config.loss.advantage='dr_grpo'"]),
    ({"loss.loss_type": "sapo", "loss.epsilon_high": 0.3},
     ["config.loss.epsilon_high=0.3 does not apply to config.loss.loss_type='sapo'"]),
    ({"loss.loss_type": "cispo", "loss.epsilon_low": 0.1},
     ["config.loss.epsilon_low=0.1", "config.loss.loss_type='cispo'"]),
    ({"loss.loss_type": "vespo", "loss.delta": 2.0},
     ["config.loss.delta=2.0", "config.loss.loss_type='vespo'"]),
    ({"loss.sampling_is_mode": "token_mask"},
     ["config.loss.sampling_is_mode='token_mask' does not apply to on-policy rollouts"]),
    ({"loss.use_bias_correction_kl": False}, ["config.loss.use_bias_correction_kl=False",
                                               "config.loss.beta=0.0"]),
    ({"train.pack_buckets": 2}, ["config.train.pack_buckets=2", "config.train.pack=False"]),
]


@pytest.mark.parametrize("overrides,words", IGNORED, ids=[",".join(o) for o, _ in IGNORED])
def test_an_option_the_algorithm_ignores_is_an_error_naming_both(overrides, words):
  with pytest.raises(config_schema.ConfigError) as e:
    config_schema.validate_config(_config("grpo", **overrides), _file("grpo"))
  for w in words:
    assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("overrides", [
    {"loss.advantage": "rloo"},                               # scale_rewards at its default
    {"loss.advantage": "f_grpo", "loss.scale_rewards": "none"},  # f_grpo takes `scale`
    {"loss.loss_type": "sapo"},                               # epsilons at their defaults
    {"loss.loss_type": "cispo", "loss.epsilon_high": 4.0},   # cispo reads epsilon_high
    {"loss.loss_type": "grpo", "loss.delta": 2.0, "loss.epsilon_low": 0.1},
    {"rollout.off_policy_steps": 1, "loss.sampling_is_mode": "token_mask"},
    {"loss.beta": 0.04, "loss.use_bias_correction_kl": False},
    {"train.pack": True, "train.pack_buckets": 2},
    {"task.name": "addition"},  # the tiny preset's task.reverse settings stay silent
])
def test_defaults_that_do_not_apply_stay_silent(overrides):
  config_schema.validate_config(_config("grpo", **overrides), _file("grpo"))


def test_grpo_run_refuses_an_ignored_option_before_any_work(tmp_path):
  from alignax.experiments import grpo
  c = _config("grpo", **{"loss.advantage": "rloo", "loss.scale_rewards": "none"})
  with pytest.raises(config_schema.ConfigError, match="does not apply to"):
    grpo.run(c, str(tmp_path / "wd"), progress=False)
  assert not os.path.exists(tmp_path / "wd")


def test_start_run_validates_once_and_returns_the_typed_config(tmp_path, monkeypatch):
  calls = []
  real = config_schema.validate_config
  monkeypatch.setattr(launch, "validate_config",
                      lambda c, f: calls.append(f) or real(c, f))
  start = launch.start_run(_config("exsearch"), str(tmp_path), _file("exsearch"))
  assert len(calls) == 1 and start.mesh is None
  assert isinstance(start.config, config_schema.Section)
  assert start.config.em.num_iterations == 2
