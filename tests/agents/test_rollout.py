"""Batched multi-turn rollouts: log-probs vs a fresh forward, masks, truncation,
batched == one by one."""
import collections
import zlib

import jax
import numpy as np
import pytest
from flax import nnx

from alignax.agents.rollouts import multi_turn as rollout_lib
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

V = 16
FMT = rollout_lib.TokenFormat(search_id=4, eos_id=2, query_id=5, final_id=6, pad_id=0)


def fake_tool(queries):
  """Output length and tokens depend on the query (1..7 tokens from 7..15)."""
  out = []
  for q in queries:
    h = zlib.crc32(q.encode())
    n = 1 + h % 7
    out.append(([7 + (h >> (3 * i)) % 9 for i in range(n)], {"len": n}))
  return out


def decode_query(ids):
  return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def model():
  config = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, max_position_embeddings=256)
  return Decoder(config, seed=1)


PROMPTS = [[1, 9, 10], [1, 11, 12, 13, 7, 8], [1, 7], [1, 8, 8, 9, 10, 11, 12, 13, 14],
           [1, 15], [1, 3, 3], [1, 10, 9, 8, 7], [1, 12]]


def fresh_logprobs(model, rows, length=80):
  """Log-prob of each token given its prefix, by one plain forward pass over
  the right-padded token arrays (no cache): [N, length]."""
  tokens = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  graphdef, state = nnx.split(model)
  logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, tokens)
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  out = np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
  return np.concatenate([np.zeros((len(rows), 1)), out], axis=1)


def test_logprobs_match_fresh_forward_across_turns(model):
  graphdef, state = nnx.split(model)
  config = rollout_lib.RolloutConfig(max_turns=4, max_turn_tokens=10, max_tool_tokens=8,
                                     max_total_tokens=64, temperature=1.0)
  prompts = PROMPTS * 4
  trajs = rollout_lib.rollout(graphdef, state, prompts, fake_tool, FMT, config,
                              jax.random.key(0), decode_query)
  assert sum(len(t.tool_calls) for t in trajs) >= 6  # really multi-turn
  assert max(len(t.tool_calls) for t in trajs) >= 2
  fresh = fresh_logprobs(model, [t.tokens for t in trajs])
  for p, t, expected in zip(prompts, trajs, fresh):
    assert t.tokens[:len(p)].tolist() == p and not t.loss_mask[:len(p)].any()
    expected = expected[:len(t.tokens)]
    np.testing.assert_allclose(t.logprobs[t.loss_mask], expected[t.loss_mask], atol=1e-5)
    assert (t.logprobs[~t.loss_mask] == 0).all()
    # Tool outputs follow each <SEARCH> and are masked out.
    toks, mask = t.tokens.tolist(), t.loss_mask
    for call, info in zip(range(len(t.tool_calls)), t.tool_info):
      i = [j for j, x in enumerate(toks) if x == FMT.search_id and mask[j]][call]
      assert not mask[i + 1:i + 1 + info["len"]].any()
      assert mask[i + 1 + info["len"]:].sum() > 0 or t.truncated
    assert len(t.tokens) <= config.max_total_tokens
    assert t.finished != t.truncated


def _greedy_ids(model):
  from alignax.framework import sampling
  gen = sampling.generate(model, PROMPTS, max_new_tokens=10)
  return np.asarray(gen.tokens)


def test_never_stopping_trajectory_is_truncated_and_flagged(model):
  graphdef, state = nnx.split(model)
  emitted = set(_greedy_ids(model)[:, :6].ravel().tolist())
  never = [i for i in range(V) if i not in emitted and i != 0]
  fmt = rollout_lib.TokenFormat(search_id=never[0], eos_id=never[1], query_id=5,
                                final_id=6, pad_id=0)
  config = rollout_lib.RolloutConfig(max_turns=3, max_turn_tokens=6, max_tool_tokens=8,
                                     max_total_tokens=64, temperature=0.0)
  trajs = rollout_lib.rollout(graphdef, state, PROMPTS, fake_tool, fmt, config,
                              jax.random.key(0), decode_query)
  for p, t in zip(PROMPTS, trajs):
    assert t.truncated and not t.finished and not t.tool_calls
    assert len(t.tokens) == len(p) + 6 and t.loss_mask.sum() == 6
  # Total-length limit: a 10-token budget leaves fewer than max_turn_tokens.
  short = rollout_lib.RolloutConfig(max_turns=3, max_turn_tokens=6, max_tool_tokens=8,
                                    max_total_tokens=12, temperature=0.0)
  trajs = rollout_lib.rollout(graphdef, state, PROMPTS[:3], fake_tool, fmt, short,
                              jax.random.key(0), decode_query)
  for p, t in zip(PROMPTS, trajs):
    assert t.truncated and len(t.tokens) == min(12, len(p) + 6)


def test_greedy_batched_equals_one_by_one(model):
  graphdef, state = nnx.split(model)
  # Make greedy rows call the tool: <SEARCH> := a token greedy decoding emits often.
  counts = collections.Counter(_greedy_ids(model)[:, :8].ravel().tolist())
  search = next(t for t, _ in counts.most_common() if t not in (0, 2))
  fmt = rollout_lib.TokenFormat(search_id=search, eos_id=2, query_id=5, final_id=6,
                                pad_id=0)
  config = rollout_lib.RolloutConfig(max_turns=4, max_turn_tokens=8, max_tool_tokens=8,
                                     max_total_tokens=72, temperature=0.0)
  batched = rollout_lib.rollout(graphdef, state, PROMPTS, fake_tool, fmt, config,
                                jax.random.key(0), decode_query)
  assert sum(len(t.tool_calls) for t in batched) >= 4
  for p, t in zip(PROMPTS, batched):
    (alone,) = rollout_lib.rollout(graphdef, state, [p], fake_tool, fmt, config,
                                   jax.random.key(0), decode_query)
    assert alone.tokens.tolist() == t.tokens.tolist()
    assert alone.loss_mask.tolist() == t.loss_mask.tolist()
    assert alone.tool_calls == t.tool_calls and alone.truncated == t.truncated
    np.testing.assert_allclose(alone.logprobs, t.logprobs, atol=1e-5)


def test_answer_ids_and_padding():
  t = rollout_lib.Trajectory(np.asarray([1, 9, 5, 7, 6, 11, 12, 2], np.int32),
                             np.asarray([0, 0, 1, 1, 1, 1, 1, 1], bool),
                             np.zeros(8, np.float32), prompt_len=2)
  assert t.answer_ids(FMT) == [11, 12]
  tokens, attn, (m,) = rollout_lib.pad_trajectories([t.tokens, t.tokens[:3]],
                                                    [[t.loss_mask, t.loss_mask[:3]]], 10, 0)
  assert tokens.shape == (2, 10) and attn.sum() == 11 and m.sum() == 7
