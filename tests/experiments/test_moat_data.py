"""The moat binary's `data.*` keys: checked before any work, and a file world
with too few training tasks stops with the key to change. (Runs on the files:
tests/experiments/test_em_pretrained.py; the loader: tests/agents/test_moat_data.py.)"""
import os

import pytest

from alignax.experiments import moat
from alignax.experiments.runtime import config_schema
from alignax.experiments.runtime.config_files import load_config_file

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples")
FILES = {k: os.path.join(_EXAMPLES, f"moat_{k.split('_')[0]}.jsonl")
         for k in ("tasks_path", "corpus_path", "lookup_path")}


def _config(**data):
  c = load_config_file(moat.DEFAULT_CONFIG + ":tiny")
  c.data.update(data)
  return c


@pytest.mark.parametrize("data,words", [
    ({"tasks_path": FILES["tasks_path"]}, ["data.tasks_path needs config.data.corpus_path"]),
    ({"corpus_path": FILES["corpus_path"]}, ["read only with config.data.tasks_path"]),
    ({**FILES, "eval_fraction": 0.5, "heldout_fraction": 0.5}, ["no training tasks"]),
    ({**FILES, "lookup_path": "/nowhere/lookup.jsonl"},
     ["config.data.lookup_path='/nowhere/lookup.jsonl'", "an existing file"]),
    ({**FILES, "search_result": "first_word"}, ["'last_word'", "'title'"]),
])
def test_bad_data_keys_are_config_errors(data, words):
  with pytest.raises(config_schema.ConfigError) as e:
    config_schema.validate_config(_config(**data), moat.DEFAULT_CONFIG)
  for w in words:
    assert w in str(e.value), (w, str(e.value))


def test_example_files_make_a_world_and_too_few_tasks_is_an_error(tmp_path):
  c = _config(**FILES)
  config_schema.validate_config(c, moat.DEFAULT_CONFIG)
  world = moat.make_world(c, str(tmp_path / "bm25"))
  train, held_in, held_out = moat.split_tasks(world, c)
  assert (len(train), len(held_in), len(held_out)) == (96, 24, 24)
  assert os.path.exists(tmp_path / "bm25" / "corpus.jsonl")  # built once, reused by run
  c.warmup.num_gold = 96
  with pytest.raises(ValueError, match="96 training tasks.*warmup.num_gold=96"):
    moat.make_world(c)
