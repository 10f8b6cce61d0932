"""Prompt data: real file layouts, formats, split, order, chat templates, errors."""
import json
import os

import datasets
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import transformers

from alignax.agents.data import prompt_data, tasks
from tests.experiments import user_fixtures


def _parquet(path, rows):
  pq.write_table(pa.Table.from_pylist(rows), str(path))
  return str(path)


GSM8K = [{"question": "Tom has 3 apples and buys 4. How many?",
          "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
         {"question": "What is 1000 + 234?", "answer": "1000+234=1234\n#### 1,234"}]
MATH = [{"problem": r"Compute $\frac{1}{2}+\frac{1}{6}$.", "level": "Level 2",
         "type": "Algebra", "solution": r"We get $\boxed{\frac{2}{3}}$."},
        {"problem": "Find x.", "level": "Level 1", "type": "Algebra",
         "solution": r"So $x=\boxed{\{1, 2\}}$ in the end."}]
VERL = [{"data_source": "openai/gsm8k",
         "prompt": [{"role": "user", "content": "1+1? Let's think step by step."}],
         "ability": "math", "reward_model": {"style": "rule", "ground_truth": "2"},
         "extra_info": {"split": "train", "index": 0}}]
TRL_MESSAGES = [{"prompt": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "2+2?"}], "solution": "4"}]


def _examples(path, **kw):
  return prompt_data.to_examples(prompt_data.load_rows(str(path)), **kw)


def test_gsm8k_parquet(tmp_path):
  ex = _examples(_parquet(tmp_path / "gsm8k.parquet", GSM8K))
  assert [e.prompt for e in ex] == [r["question"] for r in GSM8K]
  assert [e.ground_truth for e in ex] == ["7", "1234"]
  assert ex[0].columns["answer"] == GSM8K[0]["answer"]  # the raw column is passed through
  assert "question" not in ex[0].columns


def test_math_jsonl_nested_boxed(tmp_path):
  ex = _examples(user_fixtures.write_jsonl(tmp_path / "math.jsonl", MATH))
  assert [e.ground_truth for e in ex] == [r"\frac{2}{3}", r"\{1, 2\}"]
  assert ex[0].columns["level"] == "Level 2" and ex[0].prompt == MATH[0]["problem"]


def test_verl_parquet(tmp_path):
  ex = _examples(_parquet(tmp_path / "train.parquet", VERL))[0]
  assert ex.prompt == VERL[0]["prompt"] and ex.ground_truth == "2" and ex.is_conversational
  assert ex.columns["data_source"] == "openai/gsm8k"
  assert ex.columns["extra_info"] == {"split": "train", "index": 0}


def test_trl_messages_json_array(tmp_path):
  path = tmp_path / "d.json"
  path.write_text(json.dumps(TRL_MESSAGES))
  ex = _examples(path)[0]
  assert ex.prompt == TRL_MESSAGES[0]["prompt"] and ex.ground_truth == "4"
  assert ex.columns["solution"] == "4"


def test_prompt_answer_custom_fields_glob_and_save_to_disk(tmp_path):
  rows = [{"q": f"{i}>", "a": str(i)[::-1], "id": i} for i in range(10)]
  user_fixtures.write_jsonl(tmp_path / "part-0.jsonl", rows[:6])
  user_fixtures.write_jsonl(tmp_path / "part-1.jsonl", rows[6:])
  kw = dict(prompt_field="q", answer_field="a", format="prompt_answer")
  ex = _examples(tmp_path / "part-*.jsonl", **kw)
  assert [e.columns["id"] for e in ex] == list(range(10))
  assert ex[7].source.endswith("part-1.jsonl, row 1")
  datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
  ex2 = _examples(tmp_path / "saved", **kw)
  assert [(e.prompt, e.ground_truth) for e in ex2] == [(e.prompt, e.ground_truth) for e in ex]


@pytest.mark.parametrize("rows,match", [
    ([{"question": "q", "answer": "no hash marks"}, ], None),
    ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], r"row 1: field 'answer' is missing"),
    ([{"problem": "p", "solution": "no box"}], r"row 0: field 'solution' has no \\boxed"),
    ([{"text": "hello"}], "cannot detect the record format from its columns"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, rows, match):
  path = user_fixtures.write_jsonl(tmp_path / "bad.jsonl", rows)
  if match is None:  # GSM8K columns without '####': not detected; named format: the field
    with pytest.raises(prompt_data.DataError, match=r"bad.jsonl, row 0: cannot detect"):
      _examples(path)
    with pytest.raises(prompt_data.DataError, match=r"field 'answer' does not end with '####"):
      _examples(path, format="gsm8k")
    return
  with pytest.raises(prompt_data.DataError, match=r"bad.jsonl.*" + match):
    _examples(path)


def test_bad_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.train='nope.jsonl': no such file"):
    prompt_data.load_rows("nope.jsonl", "config.data.train")
  with pytest.raises(FileNotFoundError, match="the glob matches no file"):
    prompt_data.load_rows(str(tmp_path / "*.parquet"))
  (tmp_path / "d.csv").write_text("a,b\n")
  with pytest.raises(prompt_data.DataError, match="unknown file type '.csv'"):
    prompt_data.load_rows(str(tmp_path / "d.csv"))
  (tmp_path / "empty.jsonl").write_text("")
  with pytest.raises(prompt_data.DataError, match="holds no rows|could not be read"):
    prompt_data.load_rows(str(tmp_path / "empty.jsonl"))
  (tmp_path / "broken.jsonl").write_text('{"prompt": "a"\n')
  with pytest.raises(prompt_data.DataError, match="broken.jsonl' could not be read as .jsonl"):
    prompt_data.load_rows(str(tmp_path / "broken.jsonl"))
  datasets.DatasetDict({"train": datasets.Dataset.from_list([{"a": 1}])}).save_to_disk(
      str(tmp_path / "dd"))
  with pytest.raises(prompt_data.DataError, match=r"DatasetDict with splits \['train'\]"):
    prompt_data.load_rows(str(tmp_path / "dd"))
  with pytest.raises(KeyError, match="unknown data format 'csv'; registered"):
    prompt_data.to_examples([("f", [{"prompt": "a"}])], format="csv")


def test_hash_split_is_stable_and_order_free():
  examples = prompt_data.to_examples(
      [("f", [{"prompt": f"p{i}", "answer": "a"} for i in range(2000)])])
  train, evals = prompt_data.split_examples(examples, 0.1)
  train2, evals2 = prompt_data.split_examples(examples[::-1], 0.1)
  assert {e.prompt for e in evals} == {e.prompt for e in evals2}
  assert 150 < len(evals) < 250 and len(train) + len(evals) == 2000
  assert not {e.prompt for e in evals} & {e.prompt for e in train}


def test_order_is_a_function_of_seed_and_step():
  ds = prompt_data.PromptDataset([None] * 10, [[1]] * 10)
  batches = [ds.indices(0, s, 4) for s in range(5)]  # 20 draws = 2 epochs
  flat = np.concatenate(batches)
  assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
  np.testing.assert_array_equal(ds.indices(0, 3, 4), batches[3])  # a resumed run: same rows
  assert not np.array_equal(ds.indices(1, 0, 4), batches[0])


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  return {"qwen": transformers.AutoTokenizer.from_pretrained(
              user_fixtures.make_qwen25_dir(root / "qwen")),
          "llama": transformers.AutoTokenizer.from_pretrained(
              user_fixtures.make_llama32_dir(root / "llama"))}


def test_chat_template_matches_apply_chat_template(tokenizers):
  for tok in tokenizers.values():
    enc = prompt_data.PromptEncoder(tok, "auto", system_prompt="Think.")
    msgs = [{"role": "user", "content": "What is 12+7?"}]
    want = tok.apply_chat_template([{"role": "system", "content": "Think."}] + msgs,
                                   tokenize=False, add_generation_prompt=True)
    want_ids = tok(want, add_special_tokens=False)["input_ids"]
    assert enc.encode(["What is 12+7?", msgs]) == [want_ids, want_ids]
  # Llama 3's template writes BOS itself; it is there exactly once.
  llama = tokenizers["llama"]
  ids = prompt_data.PromptEncoder(llama).encode(["hi"])[0]
  assert ids[0] == llama.bos_token_id and ids.count(llama.bos_token_id) == 1


def test_raw_prompts_without_and_with_bos(tokenizers):
  qwen, llama = tokenizers["qwen"], tokenizers["llama"]
  assert prompt_data.PromptEncoder(qwen, "none").encode(["12+7"]) == [
      qwen("12+7", add_special_tokens=False)["input_ids"]]  # no BOS token
  assert prompt_data.PromptEncoder(llama, "none").encode(["12+7"]) == [
      [llama.bos_token_id] + llama("12+7", add_special_tokens=False)["input_ids"]]
  builtin = tasks.train_tokenizer(tasks.make_task("reverse"))
  problems = tasks.make_task("reverse").problems("train", 0, 3)
  assert prompt_data.PromptEncoder(builtin).encode([p.prompt for p in problems]) == \
      tasks.encode_prompts(builtin, problems)
  with pytest.raises(prompt_data.DataError, match="need a tokenizer with a chat template"):
    prompt_data.PromptEncoder(builtin).encode([[{"role": "user", "content": "1"}]])


def _data(**kw):
  base = dict(train="", eval="", eval_fraction=0.0, format="auto", prompt_field="prompt",
              answer_field="answer", chat_template="auto", system_prompt="",
              drop_long_prompts=False)
  return ml_collections.ConfigDict({**base, **kw})


def test_long_prompts_error_or_are_dropped(tmp_path, tokenizers):
  rows = [{"prompt": "a" * n, "answer": "x"} for n in (3, 200, 4)]
  path = user_fixtures.write_jsonl(tmp_path / "long.jsonl", rows)
  tok = tokenizers["qwen"]
  with pytest.raises(prompt_data.DataError, match=r"long.jsonl, row 1: the prompt has \d+ "
                     r"tokens, more than config.rollout.max_prompt_length=40"):
    prompt_data.load_prompt_data(_data(train=path), tok, max_prompt_length=40)
  train, evals = prompt_data.load_prompt_data(_data(train=path, drop_long_prompts=True), tok,
                                              max_prompt_length=40)
  assert [e.prompt for e in train.examples] == ["aaa", "aaaa"] and evals is None


def test_eval_file_and_fraction(tmp_path, tokenizers):
  rows = [{"prompt": f"{i}+1", "answer": str(i + 1)} for i in range(100)]
  path = user_fixtures.write_jsonl(tmp_path / "t.jsonl", rows)
  tok = tokenizers["llama"]
  train, evals = prompt_data.load_prompt_data(_data(train=path, eval_fraction=0.2), tok,
                                              max_prompt_length=64)
  assert len(train) + len(evals) == 100 and 5 < len(evals) < 40
  eval_path = _parquet(tmp_path / "e.parquet", rows[:7])
  train, evals = prompt_data.load_prompt_data(_data(train=path, eval=eval_path), tok,
                                              max_prompt_length=64)
  assert len(train) == 100 and len(evals) == 7
  assert evals.prompt_ids[0] == prompt_data.PromptEncoder(tok).encode(["0+1"])[0]
