"""The sampler against transformers' greedy generate, in distribution, and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alignax.framework import hf, sampling, sharding
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder
from tests.framework import hf_fixtures

PROMPT_LENGTHS = (7, 3, 11, 1)


def _prompts(vocab, lengths, seed=0):
  rng = np.random.RandomState(seed)
  return [list(rng.randint(0, vocab, n)) for n in lengths]


@pytest.mark.parametrize("kind", ["llama_gqa", "qwen2_tied"])
def test_greedy_matches_transformers_token_for_token(kind, tmp_path):
  torch_model = hf_fixtures.make_hf_model(kind, tmp_path)
  model = hf.from_pretrained(str(tmp_path))
  prompts = _prompts(model.config.vocab_size, PROMPT_LENGTHS)
  eos = 5
  ours = sampling.generate(model, prompts, max_new_tokens=12, eos_token_id=eos)
  ids, mask = sampling.pad_prompts(prompts, max(PROMPT_LENGTHS), 0)
  with torch.no_grad():
    ref = torch_model.generate(
        torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
        max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0,
        min_new_tokens=0).numpy()[:, ids.shape[1]:]
  ours_tokens = np.asarray(ours.tokens)
  ours_mask = np.asarray(ours.mask)
  for row in range(len(prompts)):
    n = int(ours_mask[row].sum())
    expected = ref[row]
    # transformers pads after eos too; compare the real tokens and the stop point.
    np.testing.assert_array_equal(ours_tokens[row, :n], expected[:n])
    if n < 12:
      assert ours_tokens[row, n - 1] == eos
      assert expected[n - 1] == eos


def test_logprobs_equal_fresh_forward_pass():
  config = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2)
  model = Decoder(config, seed=1)
  prompts = _prompts(50, (4, 9, 2), seed=3)
  temperature = 0.7
  gen = sampling.generate(model, prompts, max_new_tokens=10, temperature=temperature,
                          eos_token_id=3, seed=11, num_generations=2)
  logits = model(gen.sequences, attention_mask=gen.attention_mask)
  p = gen.prompt_tokens.shape[1]
  pred = jax.nn.log_softmax(logits[:, p - 1:-1] / temperature, axis=-1)
  fresh = jnp.take_along_axis(pred, gen.tokens[..., None], axis=-1)[..., 0]
  m = np.asarray(gen.mask)
  assert m.sum() > 10
  np.testing.assert_allclose(np.asarray(gen.logprobs)[m], np.asarray(fresh)[m], atol=1e-5)
  assert np.all(np.asarray(gen.logprobs)[~m] == 0)


def test_groups_are_contiguous_and_seed_is_reproducible():
  model = Decoder(ModelConfig(vocab_size=40), seed=0)
  prompts = _prompts(40, (3, 5))
  a = sampling.generate(model, prompts, max_new_tokens=6, temperature=1.0, seed=4,
                        num_generations=3)
  b = sampling.generate(model, prompts, max_new_tokens=6, temperature=1.0, seed=4,
                        num_generations=3)
  c = sampling.generate(model, prompts, max_new_tokens=6, temperature=1.0, seed=5,
                        num_generations=3)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
  pt = np.asarray(a.prompt_tokens)
  assert (pt[0] == pt[1]).all() and (pt[1] == pt[2]).all() and (pt[3] == pt[5]).all()
  assert not (pt[2] == pt[3]).all()


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, None, None), (0.5, None, None), (1.3, 4, None), (1.0, None, 0.7), (0.8, 6, 0.9)])
def test_sampling_distribution_matches_filtered_softmax(temperature, top_k, top_p):
  """Empirical first-token frequencies vs softmax(logits / T) after filtering.

  20000 draws over a 12-token vocabulary: the total-variation distance of the
  empirical distribution from the exact one is ~sqrt(V / (2 pi n)) ~= 0.01 in
  expectation; the bound 0.03 fails with negligible probability for a correct
  sampler and catches a wrong temperature, a missing filter or an off-by-one.
  """
  vocab, n = 12, 20000
  logits = jnp.asarray(np.random.RandomState(0).randn(1, vocab) * 1.5, jnp.float32)
  params = sampling.SamplingParams(max_new_tokens=1, temperature=temperature, top_k=top_k,
                                   top_p=top_p)
  keys = jax.random.split(jax.random.key(0), n)
  tokens = jax.vmap(lambda k: sampling.sample_next(k, logits, params)[0][0])(keys)
  empirical = np.bincount(np.asarray(tokens), minlength=vocab) / n
  # Exact reference in NumPy, written from the definitions.
  z = np.asarray(logits[0], np.float64) / temperature
  keep = np.ones(vocab, bool)
  if top_k is not None:
    keep &= z >= np.sort(z)[-top_k]
  if top_p is not None:
    zk = np.where(keep, z, -np.inf)
    p = np.exp(zk - zk.max()); p /= p.sum()
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    keep_sorted = before < top_p
    keep_sorted[0] = True
    keep2 = np.zeros(vocab, bool); keep2[order] = keep_sorted
    keep &= keep2
  p = np.where(keep, np.exp(z - z.max()), 0.0); p /= p.sum()
  assert empirical[~keep].sum() == 0
  assert 0.5 * np.abs(empirical - p).sum() < 0.03


def test_prompt_lengths_are_bucketed_so_calls_do_not_recompile():
  model = Decoder(ModelConfig(vocab_size=40), seed=0)
  sampling.generate(model, _prompts(40, (3, 9)), max_new_tokens=4)
  before = (sampling.prefill._cache_size(), sampling.decode._cache_size())
  for lengths in [(5, 2), (16, 1), (12, 12)]:
    sampling.generate(model, _prompts(40, lengths), max_new_tokens=4)
  assert (sampling.prefill._cache_size(), sampling.decode._cache_size()) == before


def test_prompt_buckets_are_few_and_tight():
  # The smallest multiple of max(8, next_pow2 / 8) that holds n (16 at least):
  # at most four buckets per doubling past 32, padding under a quarter past 32.
  got = {n: sampling.bucket_length(n, 1 << 30) for n in range(1, 1025)}
  assert [got[n] for n in (1, 16, 17, 25, 33, 40, 41, 64, 65, 100, 129)] == [
      16, 16, 24, 32, 40, 40, 48, 64, 80, 112, 160]
  for n, b in got.items():
    assert b >= n and b % 8 == 0 and (n <= 32 or (b - n) / n < 0.25)
  for lo in (32, 64, 128, 256, 512):
    assert len({got[n] for n in range(lo + 1, 2 * lo + 1)}) == 4
  assert sorted(got.values()) == [got[n] for n in range(1, 1025)]  # monotone
  assert sampling.bucket_length(100, 96) == 96  # the cap


def test_early_exit_and_padding_after_stop():
  model = Decoder(ModelConfig(vocab_size=40), seed=0)
  prompts = _prompts(40, (3, 4))
  first = sampling.generate(model, prompts, max_new_tokens=1)
  stop = [int(t) for t in np.asarray(first.tokens)[:, 0]]
  gen = sampling.generate(model, prompts, max_new_tokens=8, stop_token_ids=stop,
                          pad_token_id=39)
  m = np.asarray(gen.mask)
  assert m[:, 0].all() and not m[:, 1:].any()
  assert (np.asarray(gen.tokens)[:, 1:] == 39).all()


def test_sharded_generation_equals_unsharded():
  model = Decoder(ModelConfig(vocab_size=64), seed=2)
  prompts = _prompts(64, (3, 6, 2))
  ref = sampling.generate(model, prompts, max_new_tokens=5, num_generations=1)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharding.shard_model(model, mesh)
  out = sampling.generate(model, prompts, max_new_tokens=5, mesh=mesh)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompts=[]), "empty prompt list"),
    (dict(prompts=[[1] * 60]), "maximum length"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(eos_token_id=99), "outside the vocabulary"),
])
def test_bad_arguments_are_explained(kwargs, match):
  model = Decoder(ModelConfig(vocab_size=40, max_position_embeddings=64), seed=0)
  args = dict(prompts=[[1, 2]], max_new_tokens=8)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sampling.generate(model, args.pop("prompts"), **args)


def test_inverse_cdf_sampler_across_blocks_and_zero_probabilities():
  """Two-level inverse-CDF draws over V=700 (3 blocks, a padded tail) match the
  softmax; tokens with -inf logits (a whole block of them, and scattered ones)
  are never drawn. 40000 draws: expected TV ~ sqrt(V_live / (2 pi n)) ~= 0.03;
  bound 0.05."""
  v, n = 700, 40000
  rng = np.random.RandomState(1)
  logits = rng.randn(v).astype(np.float32)
  logits[256:512] = -np.inf          # a dead block
  logits[rng.rand(v) < 0.3] = -np.inf  # scattered filtered tokens
  x = jnp.broadcast_to(jnp.asarray(logits), (n, v))
  tokens = np.asarray(sampling.sample_inverse_cdf(jax.random.key(3), x))
  p = np.exp(logits - logits[np.isfinite(logits)].max())
  p /= p.sum()
  empirical = np.bincount(tokens, minlength=v) / n
  assert empirical[p == 0].sum() == 0
  assert 0.5 * np.abs(empirical - p).sum() < 0.05


@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_no_repeat_token_ids_are_written_at_most_once(temperature):
  config = ModelConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_layers=1,
                       num_heads=2, num_kv_heads=1)
  model = Decoder(config, seed=0)
  prompts = _prompts(12, (3, 5, 2, 6), seed=1)
  kwargs = dict(max_new_tokens=10, temperature=temperature, seed=4, num_generations=3)
  free = sampling.generate(model, prompts, **kwargs)
  banned = (4, 5, 6, 7, 8, 9)
  cons = sampling.generate(model, prompts, no_repeat_token_ids=list(banned), **kwargs)
  counts = lambda g: np.stack([(np.asarray(g.tokens) == t).sum(1) for t in banned], 1)
  assert counts(free).max() > 1  # the unconstrained model does repeat them
  assert counts(cons).max() == 1
  # Up to a row's first repeat the outputs agree (greedy: token for token).
  if temperature == 0.0:
    for f, c in zip(np.asarray(free.tokens), np.asarray(cons.tokens)):
      first_repeat = next((i for i, t in enumerate(f) if t in banned and t in f[:i]), len(f))
      np.testing.assert_array_equal(f[:first_repeat], c[:first_repeat])
  # The log-probs are those of the masked distribution.
  logits = model(cons.sequences, attention_mask=cons.attention_mask)
  p = cons.prompt_tokens.shape[1]
  pred = np.asarray(logits[:, p - 1:-1], np.float64) / (temperature or 1.0)
  toks = np.asarray(cons.tokens)
  for b in range(toks.shape[0]):
    for i in range(toks.shape[1]):
      row = pred[b, i].copy()
      row[[t for t in banned if t in toks[b, :i]]] = -np.inf
      want = row[toks[b, i]] - np.log(np.exp(row - row.max()).sum()) - row.max()
      np.testing.assert_allclose(np.asarray(cons.logprobs)[b, i], want, atol=1e-4)
