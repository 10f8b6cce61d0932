"""EXSEARCH, DRO and MOAT from a tiny random Qwen2.5-shaped checkpoint (ChatML,
no BOS) on files in the real HotpotQA layout: they run, resume bit-exactly and
export Hugging Face folders that `transformers` loads with equal logits."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from alignax.experiments import exsearch
from alignax.experiments.common import load_config_file
from alignax.framework import hf
from tests.experiments.em_fixtures import write_hotpotqa
from tests.experiments.resume import assert_killed_run_resumes_identically
from tests.experiments.user_fixtures import make_qwen25_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_CONFIGS = os.path.join(os.path.dirname(exsearch.__file__), "configs")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("em_files")
  return make_qwen25_dir(root / "qwen25"), write_hotpotqa(root / "hotpotqa")


def assert_transformers_loads(folder, markers=()):
  """`folder` loads in transformers with the logits of alignax's loader (1e-5),
  with a tokenizer that keeps each marker as one token and a generation
  config listing the checkpoint's stop ids."""
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  assert tok.bos_token_id is None and tok.chat_template
  for m in markers:
    assert len(tok.encode(m, add_special_tokens=False)) == 1, m
  ids = tok.apply_chat_template([{"role": "user", "content": " ".join(markers) + " who ?"}],
                                add_generation_prompt=True, tokenize=True)
  ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
  ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  with torch.no_grad():
    want = ref(torch.tensor([ids])).logits.numpy()
  got = np.asarray(hf.from_pretrained(folder)(jnp.asarray([ids])))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  with open(os.path.join(folder, "generation_config.json")) as f:
    eos = json.load(f)["eos_token_id"]
  assert tok.eos_token_id in (eos if isinstance(eos, list) else [eos])


def _exsearch_config(files):
  model, data = files
  c = load_config_file(os.path.join(_CONFIGS, "exsearch.py") + ":tiny")
  c.model_path, c.dataset, c.data_dir = model, "hotpotqa", data
  c.methods = ("exsearch",)
  c.warmup.steps = 2
  # Byte-level tokens: longer rows than the word-level built-in tokenizer.
  c.rollout.max_total_tokens = 230
  return c


def test_exsearch_from_checkpoint_resumes_and_exports(files, tmp_path):
  from alignax.agents import qa_world
  ref = str(tmp_path / "ref")
  exsearch.run(_exsearch_config(files), ref, progress=False)
  assert_killed_run_resumes_identically(exsearch.run, lambda: _exsearch_config(files),
                                        str(tmp_path / "resumed"), ref, stop_after=1)
  assert_transformers_loads(os.path.join(ref, "final_model"), qa_world.MARKERS)
  # The export is the last EM iteration's model, bit for bit.
  for name in ("model.safetensors", "tokenizer.json"):
    with open(os.path.join(ref, "final_model", name), "rb") as a, open(
        os.path.join(tmp_path, "resumed", "final_model", name), "rb") as b:
      assert a.read() == b.read(), name
