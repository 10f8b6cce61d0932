"""EXSEARCH, DRO and MOAT from a tiny random Qwen2.5-shaped checkpoint (ChatML,
no BOS) on files in the real HotpotQA / KILT / MOAT-JSONL layouts: they run,
resume bit-exactly and export Hugging Face folders that `transformers` loads
with equal logits."""
import os

import pytest

from alignax.experiments import exsearch
from alignax.experiments.runtime.config_files import load_config_file
from tests.experiments.em_fixtures import (assert_transformers_loads, write_hotpotqa,
                                           write_kilt)
from tests.experiments.resume import assert_killed_run_resumes_identically
from tests.experiments.user_fixtures import make_qwen25_dir

_CONFIGS = os.path.join(os.path.dirname(exsearch.__file__), "configs")
_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("em_files")
  return make_qwen25_dir(root / "qwen25"), write_hotpotqa(root / "hotpotqa")


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
  from alignax.agents.worlds import qa_world
  ref = str(tmp_path / "ref")
  exsearch.run(_exsearch_config(files), ref, progress=False)
  assert_killed_run_resumes_identically(exsearch.run, lambda: _exsearch_config(files),
                                        str(tmp_path / "resumed"), ref, stop_after=1)
  assert_transformers_loads(os.path.join(ref, "final_model"), qa_world.MARKERS)
  import transformers  # pylint: disable=g-import-not-at-top
  tok = transformers.AutoTokenizer.from_pretrained(os.path.join(ref, "final_model"))
  assert tok.bos_token_id is None and "<|im_start|>" in tok.chat_template
  # The export is the last EM iteration's model, bit for bit.
  for name in ("model.safetensors", "tokenizer.json"):
    with open(os.path.join(ref, "final_model", name), "rb") as a, open(
        os.path.join(tmp_path, "resumed", "final_model", name), "rb") as b:
      assert a.read() == b.read(), name


def _assert_same_exports(workdir, other, role):
  """The exports of a resumed run are the uninterrupted run's, bit for bit."""
  for name in ("model.safetensors", "tokenizer.json"):
    with open(os.path.join(workdir, f"final_{role}", name), "rb") as a, open(
        os.path.join(other, f"final_{role}", name), "rb") as b:
      assert a.read() == b.read(), (role, name)


def _dro_config(files, shared=True, kilt=None):
  model, _ = files
  c = load_config_file(os.path.join(_CONFIGS, "dro.py") + ":tiny")
  if kilt:
    c.dataset, c.data_dir = "kilt", kilt
  # Byte-level rows fit 256 positions; BM25's order kept (keep_top needs no shuffle).
  c.candidates.update(num=4, keep_top=2, shuffle=False)
  c.selector.top_k = 2
  c.methods = ("dro",)
  if shared:
    c.model_path = model
  else:
    c.shared_model = False
    c.selector_model_path = c.generator_model_path = model
  return c


def test_dro_from_checkpoint_on_kilt_resumes_and_exports(files, tmp_path):
  """KILT files end to end (HotpotQA: the two-model test below)."""
  from alignax.agents.worlds import qa_world
  from alignax.experiments import dro
  kilt = write_kilt(tmp_path / "kilt")
  world = dro.load_world(_dro_config(files, kilt=kilt))
  with_gold = [e for e in world.dataset.train if world.gold[e.id]]
  assert len(with_gold) > len(world.dataset.train) // 2  # from the provenance titles
  for e in with_gold:
    assert {world.dataset.corpus[i].title for i in world.gold[e.id]} == set(e.supporting)
  ref = str(tmp_path / "ref")
  dro.run(_dro_config(files, kilt=kilt), ref, progress=False)
  assert_killed_run_resumes_identically(dro.run, lambda: _dro_config(files, kilt=kilt),
                                        str(tmp_path / "resumed"), ref, stop_after=1)
  assert sorted(f for f in os.listdir(ref) if f.startswith("final_")) == ["final_model"]
  assert_transformers_loads(os.path.join(ref, "final_model"),
                            (*qa_world.MARKERS, "[1]", "[4]"))
  _assert_same_exports(ref, str(tmp_path / "resumed"), "model")


def test_dro_two_checkpoints_on_hotpotqa_export_two_models(files, tmp_path):
  from alignax.agents.data import qa_data
  from alignax.experiments import dro
  c = _dro_config(files, shared=False)
  c.dataset, c.data_dir = "hotpotqa", files[1]
  c.candidates.keep_top = 0  # gold passages BM25 missed: uniformly random positions
  c.em.num_iterations = 1
  world = dro.load_world(c)
  assert world.dataset.train == tuple(qa_data.load_hotpotqa(os.path.join(files[1],
                                                                         "train.json")))
  with_gold = [e for e in world.dataset.train if world.gold[e.id]]
  assert len(with_gold) > len(world.dataset.train) // 2
  for e in with_gold:
    assert {world.dataset.corpus[i].title for i in world.gold[e.id]} == set(e.supporting)
  c.warmup.update(selector_steps=0, generator_steps=0)  # allowed from a checkpoint
  dro.run(c, str(tmp_path), progress=False)
  for role in ("selector", "generator"):
    assert_transformers_loads(str(tmp_path / f"final_{role}"), ("[2]",))


def _moat_config(files):
  model, _ = files
  c = load_config_file(os.path.join(_CONFIGS, "moat.py") + ":tiny")
  c.planner_model_path = c.grounder_model_path = model
  c.lengths.update(plan_prompt_len=64, plan_len=64, ground_prompt_len=128, action_len=64)
  c.separate.enabled = False
  c.num_iterations = 1
  return c


def test_moat_from_checkpoint_on_jsonl_tasks_resumes_and_exports(files, tmp_path):
  """The README's example MOAT files (tasks with Search and Lookup actions, a
  BM25 corpus, a lookup table); killed after MOAT's iteration, re-run through
  the separate baseline."""
  from alignax.experiments import moat

  def config():
    c = _moat_config(files)
    c.data.update({k: os.path.join(_EXAMPLES, f"moat_{k.split('_')[0]}.jsonl")
                   for k in ("tasks_path", "corpus_path", "lookup_path")})
    c.separate.enabled = True  # phases: moat, then separate
    return c
  ref = str(tmp_path / "ref")
  moat.run(config(), ref, progress=False)
  assert_killed_run_resumes_identically(moat.run, config, str(tmp_path / "resumed"), ref,
                                        stop_after=1)
  for role in ("planner", "grounder"):
    assert_transformers_loads(os.path.join(ref, f"final_{role}"))
    _assert_same_exports(ref, str(tmp_path / "resumed"), role)


def test_bad_model_path_combinations_are_config_errors(files):
  from alignax.experiments.runtime import config_schema
  model, _ = files
  c = _dro_config(files)
  c.selector_model_path = model
  with pytest.raises(config_schema.ConfigError, match="shared_model=False"):
    config_schema.validate_config(c, os.path.join(_CONFIGS, "dro.py"))
  c = _moat_config(files)
  c.grounder_model_path = ""
  with pytest.raises(config_schema.ConfigError, match="or neither"):
    config_schema.validate_config(c, os.path.join(_CONFIGS, "moat.py"))


def test_exsearch_lora_export_has_the_adapters_merged(tmp_path):
  c = load_config_file(os.path.join(_CONFIGS, "exsearch.py") + ":tiny")
  c.lora.rank, c.methods, c.em.num_iterations = 2, ("exsearch",), 1
  exsearch.run(c, str(tmp_path), progress=False)
  assert not any(f.startswith("adapter") for f in os.listdir(tmp_path / "final_model"))
  assert_transformers_loads(str(tmp_path / "final_model"), ("<SEARCH>",))
