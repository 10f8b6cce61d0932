"""DRO's importance weights (docs/algorithms.md §7.1) against a NumPy
re-derivation: w_j = p(y*|x, z_j) p_phi(z_j) / q(z_j), self-normalised over a
question's distinct samples, where q is the distribution the selections were
actually sampled from (the selector tempered and top-p truncated, with the
constrained decoding's repeat mask) and p_phi the selector itself.

`numpy_selection_logprobs` recomputes both from the model's next-token
logits (one unpadded forward per output, not the batched, padded pass of the
code), with the nucleus written out from its definition; a Monte Carlo test
checks that q is the sampler's distribution."""
import collections

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax import objectives
from alignax.agents.methods import dro_agents
from alignax.framework import sampling
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

EOS = 2


def numpy_weights(ll, qids, keep, valid, *, tau=1.0, log_p=None, log_q=None,
                  renormalize=False):
  """§7.1 step by step: for each question, over its kept samples,
  w_j proportional to exp(l_j / tau) * p_phi(z_j) / q(z_j); malformed samples
  then set to 0, the rest optionally renormalised."""
  ll = np.asarray(ll, np.float64)
  log_p = np.zeros_like(ll) if log_p is None else np.asarray(log_p, np.float64)
  log_q = np.zeros_like(ll) if log_q is None else np.asarray(log_q, np.float64)
  w = np.zeros(len(ll))
  for q in sorted(set(qids)):
    rows = [i for i in range(len(ll)) if qids[i] == q and keep[i]]
    if not rows:
      continue
    # exp(l / tau) * p / q, in log space for range.
    log_unnorm = np.asarray([ll[i] / tau + log_p[i] - log_q[i] for i in rows])
    unnorm = np.exp(log_unnorm - log_unnorm.max())
    for i, u in zip(rows, unnorm / unnorm.sum()):
      w[i] = u if valid[i] else 0.0
    every = [i for i in range(len(ll)) if qids[i] == q]
    if renormalize and w[every].sum() > 0:
      w[every] /= w[every].sum()
  return w


def numpy_selection_logprobs(model, prompt, output, *, temperature, top_p, no_repeat=()):
  """(log p_phi(z), log q(z)) of one output after its prompt, from the model's
  next-token logits after each prefix (one forward of prompt + output: the
  decoder is causal, so position i's logits see only tokens <= i):
    p_phi: softmax(logits), q: softmax(logits / temperature) restricted to the
    nucleus -- the most probable tokens, in order, while the mass of those
    before a token is < top_p (the first always kept), renormalised -- with
    the token actually written always counted in (it was drawn from it);
    both with each no-repeat id removed once written."""
  log_p = log_q = 0.0
  hidden, _ = model.forward(jnp.asarray([list(prompt) + list(output)]))
  every = np.asarray(model.logits(hidden)[0], np.float64)
  for t, tok in enumerate(output):
    logits = every[len(prompt) + t - 1]
    allowed = np.ones(len(logits), bool)
    for r in no_repeat:
      if r in output[:t]:
        allowed[r] = False
    p = np.where(allowed, np.exp(logits - logits[allowed].max()), 0.0)
    log_p += np.log(p[tok] / p.sum())
    s = np.where(allowed, np.exp((logits - logits[allowed].max()) / temperature), 0.0)
    s /= s.sum()
    nucleus, mass = set(), 0.0
    for v in np.argsort(-s, kind="stable"):
      if s[v] == 0 or (nucleus and mass >= top_p):
        break
      nucleus.add(int(v))
      mass += s[v]
    nucleus.add(int(tok))
    log_q += np.log(s[tok] / sum(s[v] for v in nucleus))
  return log_p, log_q


def _tiny_model(vocab=10, scale=4.0, seed=0):
  """A 1-layer decoder whose logits are scaled up (peaked next-token
  distributions, so that top-p truncates)."""
  model = Decoder(ModelConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                              num_layers=1, num_heads=2, num_kv_heads=1,
                              max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
                              eos_token_id=EOS, tie_word_embeddings=True), seed=seed)
  graphdef, state = nnx.split(model)
  state = jax_tree_scale(state, scale)
  return nnx.merge(graphdef, state)


def jax_tree_scale(state, scale):
  import jax
  return jax.tree.map(lambda x: x * scale if x.ndim == 2 else x, state)


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.25])
def test_weights_against_numpy(renormalize, tau):
  rng = np.random.RandomState(0)
  n = 24
  qids = np.repeat(np.arange(4), 6)
  outputs = [tuple(rng.randint(0, 3, 2)) for _ in range(n)]  # duplicates likely
  keep = objectives.first_occurrences(outputs, qids)
  assert not keep.all()
  valid = rng.rand(n) > 0.2
  ll = rng.randn(n) - 2.0
  log_p, log_q = rng.randn(n) * 2 - 6, rng.randn(n) * 2 - 5
  got = objectives.dro_weights(ll, qids, 4, keep, valid, temperature=tau,
                               renormalize_after_filter=renormalize,
                               selector_logprobs=log_p, proposal_logprobs=log_q)
  want = numpy_weights(ll, qids, keep, valid, tau=tau, log_p=log_p, log_q=log_q,
                       renormalize=renormalize)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # The importance ratio changes the weights (the proposal is not the selector).
  plain = numpy_weights(ll, qids, keep, valid, tau=tau, renormalize=renormalize)
  assert np.abs(want - plain).max() > 0.05


@pytest.mark.parametrize("renormalize", [False, True])
def test_q_equal_to_the_selector_gives_the_normalised_likelihood(renormalize):
  # Temperature 1, top_p 1: q = p_phi, the ratio is 1 and w = softmax(l) over
  # the kept samples of each question.
  rng = np.random.RandomState(1)
  qids = np.repeat(np.arange(3), 4)
  keep = np.asarray([1, 1, 0, 1] * 3, bool)
  valid = np.ones(12, bool)
  ll = rng.randn(12)
  log_p = rng.randn(12) * 3
  got = objectives.dro_weights(ll, qids, 3, keep, valid, renormalize_after_filter=renormalize,
                               selector_logprobs=log_p, proposal_logprobs=log_p)
  plain = objectives.dro_weights(ll, qids, 3, keep, valid,
                                 renormalize_after_filter=renormalize)
  np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-7)
  for q in range(3):
    rows = np.flatnonzero((qids == q) & keep)
    e = np.exp(ll[rows])
    np.testing.assert_allclose(np.asarray(got)[rows], e / e.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="both"):
    objectives.dro_weights(ll, qids, 3, keep, valid, selector_logprobs=log_p)


@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.95), (0.7, 0.6), (1.0, 1.0)])
def test_selection_logprobs_against_numpy(temperature, top_p):
  model = _tiny_model()
  graphdef, params = nnx.split(model)
  rng = np.random.RandomState(2)
  prompts = [[1] + rng.randint(3, 10, rng.randint(2, 7)).tolist() for _ in range(5)]
  no_repeat = (4, 5, 6, 7)
  gen = sampling.generate(model, prompts, max_new_tokens=5, temperature=temperature,
                          top_p=top_p, eos_token_id=EOS, seed=3, num_generations=3,
                          pad_token_id=0, no_repeat_token_ids=no_repeat)
  tokens, mask = np.asarray(gen.tokens), np.asarray(gen.mask)
  outputs = [t[m].tolist() for t, m in zip(tokens, mask)]
  rows = [p for p in prompts for _ in range(3)]
  log_p, log_q = dro_agents.selection_logprobs(graphdef, params, rows, outputs,
                                               temperature=temperature, top_p=top_p,
                                               no_repeat=no_repeat, chunk=4)
  want = np.asarray([numpy_selection_logprobs(model, p, o, temperature=temperature,
                                              top_p=top_p, no_repeat=no_repeat)
                     for p, o in zip(rows, outputs)])
  np.testing.assert_allclose(log_p, want[:, 0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(log_q, want[:, 1], rtol=1e-4, atol=1e-4)
  if (temperature, top_p) == (1.0, 1.0):
    np.testing.assert_allclose(log_p, log_q, rtol=1e-6, atol=1e-6)
    # With no filtering, q is also the sampler's own reported log-prob.
    np.testing.assert_allclose(log_q, (np.asarray(gen.logprobs) * mask).sum(1), atol=1e-4)
  else:
    assert np.abs(log_p - log_q).max() > 0.1


def test_p_phi_is_a_distribution_over_outputs():
  # Summed over every output of at most 3 tokens (an output ends at EOS or at
  # the budget), exp(log p_phi) is 1: the repeat mask renormalises each step.
  model = _tiny_model(vocab=6)
  graphdef, params = nnx.split(model)
  outs = []

  def extend(prefix):
    if len(prefix) == 3 or (prefix and prefix[-1] == EOS):
      outs.append(prefix)
      return
    for v in range(6):
      extend(prefix + [v])

  extend([])
  prompt = [1, 3, 4]
  log_p, log_q = dro_agents.selection_logprobs(graphdef, params, [prompt] * len(outs), outs,
                                               temperature=1.0, top_p=None, no_repeat=(3, 4))
  # Outputs repeating a no-repeat id have probability 0 (masked); the others sum to 1.
  np.testing.assert_allclose(np.exp(log_p.astype(np.float64)).sum(), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(log_p, log_q)
  repeated = [any(o.count(r) > 1 for r in (3, 4)) for o in outs]
  assert np.all(np.exp(log_p[np.asarray(repeated)]) == 0)


def test_q_is_the_samplers_distribution():
  # Monte Carlo: 6000 outputs of one prompt sampled at temperature 0.7, top_p
  # 0.8 with a repeat mask; each distinct output's frequency matches exp(log q)
  # (a binomial z-score) and the outputs never seen have little q mass. (A
  # q without the top-p truncation, or without the temperature, is off by
  # more than 8 standard deviations here.)
  model = _tiny_model(vocab=7, scale=3.0, seed=1)
  graphdef, params = nnx.split(model)
  prompt, n = [1, 3, 5], 6000
  kw = dict(temperature=0.7, top_p=0.8)
  gen = sampling.generate(model, [prompt], max_new_tokens=3, eos_token_id=EOS, seed=0,
                          num_generations=n, pad_token_id=0, no_repeat_token_ids=(3, 4, 5),
                          **kw)
  tokens, mask = np.asarray(gen.tokens), np.asarray(gen.mask)
  counts = collections.Counter(tuple(t[m].tolist()) for t, m in zip(tokens, mask))
  outs = [list(o) for o in counts]
  assert len(outs) > 4
  log_p, log_q = dro_agents.selection_logprobs(graphdef, params, [prompt] * len(outs), outs,
                                               no_repeat=(3, 4, 5), **kw)
  q = np.exp(log_q.astype(np.float64))
  freq = np.asarray([counts[tuple(o)] for o in outs]) / n
  common = q * n >= 5  # a binomial z-score where the normal approximation holds
  assert common.sum() > 4
  z = (freq - q) / np.sqrt(q * (1 - q) / n)
  assert np.abs(z[common]).max() < 4.5, (freq, q)
  assert abs(freq[~common].sum() - q[~common].sum()) < 0.01
  assert q.sum() > 0.99  # the sampled outputs hold (almost) all of q's mass
  # The sharpened proposal is not the selector: p_phi gives these less mass.
  assert np.exp(log_p.astype(np.float64)).sum() < q.sum() - 0.01
