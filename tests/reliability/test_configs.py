"""Every config key is checked (type, range, choice) before any work, with one
message that names the key, its value and what it must be."""
import os
import subprocess
import sys

import pytest

from alignax.experiments.runtime import config_files, config_schema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "alignax", "experiments", "configs")
PRESETS = {"grpo": ("default", "tiny"), "exsearch": ("default", "tiny"),
           "dro": ("default", "tiny"), "moat": ("default", "tiny"),
           "cau_unlearn": ("default", "tiny", "conflict", "ml1m")}
# Keys whose values another component validates (model-specific kwargs; the
# user-data keys of grpo, checked by its data loader).
NOT_IN_SCHEMA = ("model.kwargs.", "data.", "reward.")


def _file(name):
  return os.path.join(CONFIGS, name + ".py")


def _config(name, preset="tiny", **overrides):
  c = config_files.load_config_file(f"{_file(name)}:{preset}")
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = c
    for p in path:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  return c


@pytest.mark.parametrize("name,preset", [(n, p) for n, ps in PRESETS.items() for p in ps])
def test_presets_are_valid_and_every_key_has_a_rule(name, preset):
  c = _config(name, preset)
  config_schema.validate_config(c, _file(name))
  schema, _ = config_schema._schema_of(_file(name))
  leaves = [k for k in config_files._keys(c)
            if not hasattr(config_schema._lookup(c, k), "keys")]
  missing = [k for k in leaves if k not in schema and not k.startswith(NOT_IN_SCHEMA)
             and k != "unlearn.fixed_weights"]  # checked by a cross-key CHECK
  assert not missing, f"config keys without a validation rule: {missing}"


BAD = [
    # (binary, key, value, words the message must contain)
    ("grpo", "loss.importance_sampling_level", "seq", ["'sequence'", "'token'"]),
    ("grpo", "loss.loss_type", "ppo2", ["'dapo'", "'grpo'"]),
    ("grpo", "loss.advantage", "gae", ["'rloo'"]),
    ("grpo", "loss.scale_rewards", "batchwise", ["'group'"]),
    ("grpo", "rollout.prompts_per_step", 0, [">= 1"]),
    ("grpo", "rollout.num_generations", 1, [">= 2"]),
    ("grpo", "rollout.top_p", 1.5, ["<= 1"]),
    ("grpo", "rollout.top_k", -3, [">= 0"]),
    ("grpo", "rollout.temperature", -0.5, ["> 0"]),
    ("grpo", "train.learning_rate", -1e-3, ["> 0"]),
    ("grpo", "train.learning_rate", float("nan"), ["finite"]),
    ("grpo", "train.steps", 0, [">= 1"]),
    ("grpo", "train.steps", 2.5, ["integer"]),
    ("grpo", "train.checkpoint_every", 0, [">= 1"]),
    ("grpo", "loss.beta", -0.1, [">= 0"]),
    ("grpo", "loss.delta", 0.5, ["None or"]),
    ("grpo", "mesh.fsdp", 0, [">= 1"]),
    ("grpo", "model_path", "/nonexistent/model", ["save_pretrained model folder", "does not exist"]),
    ("grpo", "task.name", "sorting", ["'reverse'", "'addition'"]),
    ("grpo", "warmup.flawed_fraction", 1.5, ["<= 1"]),
    ("exsearch", "methods", ("exsearch", "bogus"), ["'uniform'"]),
    ("exsearch", "em.num_samples", 0, [">= 1"]),
    ("exsearch", "dataset", "nq", ["'hotpotqa'", "'kilt'"]),
    ("exsearch", "world.split", "entity", ["'person'"]),
    ("exsearch", "rollout.top_p", 0.0, ["> 0"]),
    ("dro", "em.learning_rate", -1.0, ["> 0"]),
    ("dro", "world.heldout_fraction", 1.0, ["< 1"]),
    ("dro", "methods", (), ["non-empty"]),
    ("moat", "stage1.num_samples", 1, [">= 2"]),
    ("moat", "critic.name", "gpt", ["'builtin'"]),
    ("moat", "planner.num_layers", 0, [">= 1"]),
    ("cau_unlearn", "unlearn.curriculum", "medium", ["'hard'"]),
    ("cau_unlearn", "data.name", "movielens_20m", ["'movielens_1m'"]),
    ("cau_unlearn", "train.lr", 0.0, ["> 0"]),
    ("cau_unlearn", "unlearn.normalization", "l1", ["'l2'"]),
    ("cau_unlearn", "data.synthetic.forget_item", "nearby", ["'same_cluster'"]),
    ("cau_unlearn", "unlearn.kl_exclude_forget_set", 1, ["True or False"]),
]


@pytest.mark.parametrize("name,key,value,words", BAD,
                         ids=[f"{b[0]}-{b[1]}={b[2]!r}" for b in BAD])
def test_bad_value_is_one_clear_error(name, key, value, words):
  with pytest.raises(config_schema.ConfigError) as e:
    config_schema.validate_config(_config(name, **{key: value}), _file(name))
  msg = str(e.value)
  assert f"config.{key}=" in msg, msg
  for w in words:
    assert w in msg, msg


CROSS = [
    ("grpo", {"rollout.prompts_per_step": 3, "train.micro_batches": 2},
     ["config.rollout.prompts_per_step=3", "config.train.micro_batches=2"]),
    ("dro", {"selector.top_k": 20}, ["config.selector.top_k=20", "config.candidates.num"]),
    ("moat", {"world.relations": "birthplace telepathy"}, ["telepathy"]),
    ("cau_unlearn", {"unlearn.fixed_weights": (1.0, 2.0)}, ["fixed_weights"]),
]


@pytest.mark.parametrize("name,overrides,words", CROSS, ids=[c[0] for c in CROSS])
def test_cross_key_checks_name_both_keys(name, overrides, words):
  with pytest.raises(config_schema.ConfigError) as e:
    config_schema.validate_config(_config(name, **overrides), _file(name))
  for w in words:
    assert w in str(e.value)


def test_run_refuses_before_any_work(tmp_path):
  """The binary's run() checks first: nothing is built or written."""
  from alignax.experiments import grpo
  with pytest.raises(config_schema.ConfigError, match="importance_sampling_level"):
    grpo.run(_config("grpo", **{"loss.importance_sampling_level": "seq"}),
             str(tmp_path / "wd"), progress=False)
  assert not os.path.exists(tmp_path / "wd")


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "alignax.experiments.grpo", *args],
                        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


@pytest.mark.parametrize("args", [
    ["--config.train.stepz=3"],                                    # default config
    ["--config", _file("grpo") + ":tiny", "--config.train.stepz=3"],  # space form
])
def test_mistyped_key_on_the_command_line(args, tmp_path):
  out = _cli(*args, f"--workdir={tmp_path}")
  assert out.returncode != 0
  assert "Unknown config key(s): config.train.stepz" in out.stderr, out.stderr[-2000:]
  assert "did you mean config.train.steps" in out.stderr
  assert "Traceback" not in out.stderr


def test_bad_value_on_the_command_line(tmp_path):
  out = _cli("--config.loss.importance_sampling_level=seq", f"--workdir={tmp_path}/w")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert "config.loss.importance_sampling_level='seq'" in out.stderr
  assert not os.path.exists(tmp_path / "w")
