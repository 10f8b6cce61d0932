"""save_pretrained keeps the config fields alignax does not use; export_pretrained
writes a full directory; stop ids come from every source transformers uses."""
import json
import os

import numpy as np
import transformers

from alignax.framework import hf
from tests.experiments import user_fixtures


def test_round_trip_keeps_unused_config_fields(tmp_path):
  src = user_fixtures.make_qwen25_dir(tmp_path / "src")
  with open(os.path.join(src, "config.json")) as f:
    before = json.load(f)
  hf.save_pretrained(hf.from_pretrained(src), str(tmp_path / "out"))
  with open(tmp_path / "out" / "config.json") as f:
    after = json.load(f)
  assert after["max_window_layers"] == before["max_window_layers"] == 1  # default: 28
  for key in ("use_sliding_window", "initializer_range", "tie_word_embeddings",
              "vocab_size", "rope_theta"):
    assert after.get(key) == before.get(key), key
  assert after.get("bos_token_id") is None


def test_export_and_stop_ids(tmp_path):
  src = user_fixtures.make_llama32_dir(tmp_path / "src")
  tok = transformers.AutoTokenizer.from_pretrained(src)
  model = hf.from_pretrained(src)
  stop = hf.stop_token_ids(src, tok, model.config)
  ids = tok.convert_tokens_to_ids
  assert stop == tuple(sorted([ids("<|end_of_text|>"), ids("<|eom_id|>"), ids("<|eot_id|>")]))
  assert tok.pad_token_id is None and hf.pad_token_id(tok, stop) == stop[0]
  out = hf.export_pretrained(model, str(tmp_path / "final"), tokenizer=tok, source=src,
                             stop_ids=stop)
  assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
          "chat_template.jinja"} <= set(os.listdir(out))
  assert transformers.AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template
  assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == list(stop)
  # Without a source generation config, one is written from the stop ids.
  out2 = hf.export_pretrained(model, str(tmp_path / "final2"), tokenizer=tok, stop_ids=stop)
  assert transformers.GenerationConfig.from_pretrained(out2).eos_token_id == list(stop)
  assert not os.path.exists(str(tmp_path / "final2") + ".tmp")
