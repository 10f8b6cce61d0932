"""Model directories: each way a save_pretrained folder can be broken gives one
error that names the file (and field or tensor) and says what to do."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from alignax.agents.data import tasks
from alignax.framework import hf
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("model") / "m")
  tok = tasks.train_tokenizer(tasks.make_task("reverse"), path)
  config = ModelConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                       num_layers=1, num_heads=2, num_kv_heads=1,
                       max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2)
  hf.save_pretrained(Decoder(config, seed=0), path)
  return path


@pytest.fixture
def copy(model_dir, tmp_path):
  dst = str(tmp_path / "copy")
  shutil.copytree(model_dir, dst)
  return dst


def _edit_config(path, edit):
  file = os.path.join(path, "config.json")
  config = json.load(open(file))
  edit(config)
  json.dump(config, open(file, "w"))


def _write(path, name, text):
  with open(os.path.join(path, name), "w") as f:
    f.write(text)


def _shard(path, index_text=None, drop_shard=False):
  """Rewrites the weights as two shards + an index (optionally broken)."""
  single = os.path.join(path, "model.safetensors")
  tensors = load_file(single)
  os.remove(single)
  names = sorted(tensors)
  weight_map = {}
  for i, group in enumerate((names[::2], names[1::2])):
    fn = f"model-0000{i + 1}-of-00002.safetensors"
    if not (drop_shard and i == 1):
      save_file({n: tensors[n] for n in group}, os.path.join(path, fn))
    weight_map.update({n: fn for n in group})
  _write(path, "model.safetensors.index.json",
         index_text if index_text is not None else json.dumps({"weight_map": weight_map}))


def _truncate(path, name, keep):
  file = os.path.join(path, name)
  size = os.path.getsize(file)
  with open(file, "r+b") as f:
    f.truncate(keep(size))


def _poison(path, value):
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  tensors["model.layers.0.mlp.up_proj.weight"][3, 5] = value
  save_file(tensors, file)


CASES = {
    # name: (break the copy, error type, words the message must contain)
    "config_malformed": (lambda p: _write(p, "config.json", '{"model_type": "llama",'),
                         ValueError, ["config.json", "not valid JSON", "line 1"]),
    "config_empty": (lambda p: _write(p, "config.json", ""), ValueError,
                     ["config.json", "not valid JSON"]),
    "config_is_a_list": (lambda p: _write(p, "config.json", "[1, 2]"), ValueError,
                         ["config.json", "list"]),
    "config_missing": (lambda p: os.remove(os.path.join(p, "config.json")),
                       FileNotFoundError, ["config.json"]),
    "missing_hidden_size": (lambda p: _edit_config(p, lambda c: c.pop("hidden_size")),
                            ValueError, ["config.json", "hidden_size"]),
    "missing_vocab_size": (lambda p: _edit_config(p, lambda c: c.pop("vocab_size")),
                           ValueError, ["config.json", "vocab_size"]),
    "string_hidden_size": (lambda p: _edit_config(p, lambda c: c.update(hidden_size="16")),
                           ValueError, ["config.json", "hidden_size", "str"]),
    "negative_layers": (lambda p: _edit_config(p, lambda c: c.update(num_hidden_layers=-1)),
                        ValueError, ["config.json", "num_layers", "-1"]),
    "unsupported_model_type": (lambda p: _edit_config(p, lambda c: c.update(model_type="gpt2")),
                               ValueError, ["config.json", "model_type='gpt2'", "qwen2"]),
    "no_model_type": (lambda p: _edit_config(p, lambda c: c.pop("model_type")),
                      ValueError, ["config.json", "model_type=None"]),
    "no_weights": (lambda p: os.remove(os.path.join(p, "model.safetensors")),
                   FileNotFoundError, ["model.safetensors"]),
    "truncated_weights": (lambda p: _truncate(p, "model.safetensors", lambda n: n // 2),
                          ValueError, ["model.safetensors", "truncated"]),
    "weights_cut_in_header": (lambda p: _truncate(p, "model.safetensors", lambda n: 20),
                              ValueError, ["model.safetensors", "truncated"]),
    "empty_weights": (lambda p: _truncate(p, "model.safetensors", lambda n: 0),
                      ValueError, ["model.safetensors"]),
    "nan_weight": (lambda p: _poison(p, np.nan), ValueError,
                   ["model.layers.0.mlp.up_proj.weight", "NaN", "(3, 5)"]),
    "inf_weight": (lambda p: _poison(p, -np.inf), ValueError,
                   ["model.layers.0.mlp.up_proj.weight", "non-finite"]),
    "index_malformed": (lambda p: _shard(p, index_text='{"weight_map": {'), ValueError,
                        ["model.safetensors.index.json", "not a valid"]),
    "index_without_weight_map": (lambda p: _shard(p, index_text='{"metadata": {}}'),
                                 ValueError, ["model.safetensors.index.json", "weight_map"]),
    "index_lists_missing_shard": (lambda p: _shard(p, drop_shard=True), FileNotFoundError,
                                  ["model.safetensors.index.json",
                                   "model-00002-of-00002.safetensors"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_model_dir_is_one_clear_error(copy, case):
  damage, error, words = CASES[case]
  damage(copy)
  with pytest.raises(error) as e:
    hf.from_pretrained(copy)
  msg = str(e.value)
  for w in words:
    assert w in msg, msg
  assert copy in msg, msg


def test_sharded_copy_still_loads(copy, model_dir):
  _shard(copy)
  a, b = hf.from_pretrained(copy), hf.from_pretrained(model_dir)
  np.testing.assert_array_equal(a.embed_tokens[...], b.embed_tokens[...])


def test_missing_tokenizer_files_say_so(copy):
  for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if os.path.exists(os.path.join(copy, f)):
      os.remove(os.path.join(copy, f))
  with pytest.raises(FileNotFoundError) as e:
    hf.load_tokenizer(copy)
  msg = str(e.value)
  assert "No tokenizer files" in msg and copy in msg and "save_pretrained" in msg
  assert "sentencepiece" not in msg.lower()


def test_damaged_tokenizer_json_names_the_folder(copy):
  _write(copy, "tokenizer.json", '{"version": "1.0", "model": ')
  with pytest.raises(ValueError) as e:
    hf.load_tokenizer(copy)
  assert copy in str(e.value) and "tokenizer.json" in str(e.value)


def test_config_round_trips_through_autoconfig(model_dir):
  config = hf.load_config(model_dir)
  assert (config.hidden_size, config.num_layers, config.eos_token_id) == (16, 1, 2)
