"""Path-like options (`--workdir`, model folders, adapters, data and reward
files) fail before any work with one message naming the path, what is there
and what to give instead."""
import os
import subprocess
import sys

import pytest

from alignax.experiments import grpo
from alignax.experiments.runtime import config_files, config_schema, workdir_checks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "alignax", "experiments", "configs", "grpo.py") + ":tiny"


def _tiny(**overrides):
  c = config_files.load_config_file(TINY)
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture
def a_file(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("not a folder\n")
  return str(path)


def test_workdir_that_is_a_file_on_the_command_line(a_file):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "alignax.experiments.grpo",
                        f"--config={TINY}", f"--workdir={a_file}"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
  assert out.returncode != 0
  assert f"--workdir={a_file}: it is a file, not a folder" in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert open(a_file).read() == "not a folder\n"  # untouched


@pytest.mark.parametrize("binary", ["grpo", "exsearch", "dro", "moat", "cau_unlearn"])
def test_every_binary_refuses_a_file_as_workdir_before_any_work(binary, a_file):
  module = __import__(f"alignax.experiments.{binary}", fromlist=["run"])
  config = config_files.load_config_file(module.DEFAULT_CONFIG + ":tiny")
  with pytest.raises(config_schema.ConfigError, match="it is a file, not a folder"):
    module.run(config, a_file, progress=False) if binary == "grpo" else module.run(
        config, a_file)


def test_workdir_below_a_file(a_file):
  with pytest.raises(config_schema.ConfigError) as e:
    workdir_checks.check_workdir(os.path.join(a_file, "run"))
  assert f"{a_file} is a file" in str(e.value)


def test_unwritable_workdir_names_the_folder(tmp_path, monkeypatch):
  # Root may write anywhere, so the permission answer is simulated.
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(tmp_path)
                      else real_access(p, mode))
  with pytest.raises(config_schema.ConfigError) as e:
    workdir_checks.check_workdir(str(tmp_path / "new" / "run"))
  msg = str(e.value)
  assert f"its nearest existing folder {tmp_path}" in msg and "not writable" in msg, msg


def test_empty_workdir():
  with pytest.raises(config_schema.ConfigError, match="give a folder path"):
    workdir_checks.check_workdir("")


def test_a_new_or_existing_folder_is_accepted(tmp_path):
  workdir_checks.check_workdir(str(tmp_path))
  workdir_checks.check_workdir(str(tmp_path / "a" / "b"))
  assert not os.path.exists(tmp_path / "a")  # checking creates nothing
  workdir_checks.make_workdir(str(tmp_path / "a" / "b"))
  assert os.path.isdir(tmp_path / "a" / "b")


@pytest.mark.parametrize("key,value,words", [
    ("model_path", "FILE", ["save_pretrained model folder", "it is a file"]),
    ("model_path", "DIR", ["save_pretrained model folder", "a directory without config.json"]),
    ("model_path", "MISSING", ["it does not exist (the nearest existing folder is"]),
    ("lora.init_from", "DIR", ["PEFT adapter folder", "without adapter_config.json"]),
])
def test_model_and_adapter_paths(key, value, words, a_file, tmp_path):
  path = {"FILE": a_file, "DIR": str(tmp_path), "MISSING": str(tmp_path / "x" / "y")}[value]
  with pytest.raises(config_schema.ConfigError) as e:
    config_schema.validate_config(_tiny(**{key: path}), grpo.DEFAULT_CONFIG)
  msg = str(e.value)
  assert f"config.{key}={path!r}" in msg, msg
  for w in words:
    assert w in msg, msg


@pytest.mark.parametrize("key,value,words", [
    ("data.train", "DIR", ["is a directory but not one written by datasets' save_to_disk"]),
    ("data.train", "FILE", ["unknown file type", ".jsonl"]),
    ("data.train", "MISSING", ["no such file or directory"]),
    ("reward.functions", "DIR:fn", ["is a directory; give a Python file"]),
    ("reward.functions", "MISSING:fn", ["no file"]),
])
def test_data_and_reward_paths_fail_before_any_work(key, value, words, a_file, tmp_path):
  path = value.replace("DIR", str(tmp_path)).replace("FILE", a_file).replace(
      "MISSING", str(tmp_path / "nope.jsonl"))
  workdir = tmp_path / "wd"
  with pytest.raises((config_schema.ConfigError, ValueError, FileNotFoundError)) as e:
    grpo.run(_tiny(**{key: path}), str(workdir), progress=False)
  msg = str(e.value)
  assert path.split(":")[0] in msg, msg
  for w in words:
    assert w in msg, msg
  assert not os.path.exists(workdir / "init_model")  # nothing built
