"""Each bad checkpoint gives one clear error naming the problem."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from alignax.framework import hf
from alignax.framework.config import ModelConfig
from tests.framework import hf_fixtures


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("llama")
  hf_fixtures.make_hf_model("llama_gqa", path)
  return path


def _copy_with(src, dst, edit_config=None, edit_tensors=None):
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  if edit_config:
    edit_config(config)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f)
  tensors = load_file(os.path.join(src, "model.safetensors"))
  if edit_tensors:
    edit_tensors(tensors)
  save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  return str(dst)


def test_unsupported_model_type(llama_dir, tmp_path):
  path = _copy_with(llama_dir, tmp_path, edit_config=lambda c: c.update(model_type="gpt2"))
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    hf.from_pretrained(path)


def test_missing_tensor_is_named(llama_dir, tmp_path):
  name = "model.layers.1.mlp.up_proj.weight"
  path = _copy_with(llama_dir, tmp_path, edit_tensors=lambda t: t.pop(name))
  with pytest.raises(KeyError, match=name.replace(".", r"\.")):
    hf.from_pretrained(path)


def test_shape_mismatch_is_named(llama_dir, tmp_path):
  name = "model.layers.0.self_attn.k_proj.weight"
  def shrink(t):
    t[name] = t[name][:8]
  path = _copy_with(llama_dir, tmp_path, edit_tensors=shrink)
  with pytest.raises(ValueError, match=r"k_proj\.weight.*shape \(8, 64\)"):
    hf.from_pretrained(path)


def test_unexpected_tensor_is_refused(llama_dir, tmp_path):
  def add(t):
    t["model.layers.2.mlp.up_proj.weight"] = np.zeros((96, 64), np.float32)
  path = _copy_with(llama_dir, tmp_path, edit_tensors=add)
  with pytest.raises(ValueError, match="does not use"):
    hf.from_pretrained(path)


def test_sharded_checkpoint_with_index(llama_dir, tmp_path):
  tensors = load_file(os.path.join(llama_dir, "model.safetensors"))
  names = sorted(tensors)
  halves = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for fn, group in halves.items():
    save_file({n: tensors[n] for n in group}, os.path.join(tmp_path, fn),
              metadata={"format": "pt"})
    weight_map.update({n: fn for n in group})
  with open(os.path.join(tmp_path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  with open(os.path.join(llama_dir, "config.json")) as f, open(
      os.path.join(tmp_path, "config.json"), "w") as g:
    g.write(f.read())
  sharded = hf.from_pretrained(str(tmp_path))
  single = hf.from_pretrained(str(llama_dir))
  ids = np.arange(10, dtype=np.int32).reshape(1, 10)
  np.testing.assert_array_equal(np.asarray(sharded(ids)), np.asarray(single(ids)))


def test_missing_directory_contents(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.from_pretrained(str(tmp_path))


def test_tokenizer_larger_than_vocab_is_refused(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  import transformers
  vocab = {f"w{i}": i for i in range(50)}
  vocab["[UNK]"] = 50
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match="vocab_size is 40"):
    hf.load_tokenizer(str(tmp_path), ModelConfig(vocab_size=40))
  assert len(hf.load_tokenizer(str(tmp_path), ModelConfig(vocab_size=64))) == 51


def test_bad_gqa_config():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    ModelConfig(num_heads=6, num_kv_heads=4)
