"""Sampler and model arguments: each wrong argument is one error naming it,
raised before any compilation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax.framework import sampling
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

VOCAB = 32


@pytest.fixture(scope="module")
def model():
  return Decoder(ModelConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                             num_layers=1, num_heads=2, num_kv_heads=1,
                             max_position_embeddings=32), seed=0)


GOOD = dict(max_new_tokens=4)
PROMPTS = [[1, 2, 3], [4, 5]]
BAD_GENERATE = [
    # (prompts, kwargs, error, words)
    (np.zeros((0, 3), np.int32), {}, ValueError, ["prompts is empty"]),
    ([], {}, ValueError, ["prompts is empty"]),
    ([[1, 2], []], {}, ValueError, ["prompts[1] is empty"]),
    ([[1, 2], [3, 99]], {}, ValueError, ["prompts[1][1] = 99", "vocabulary"]),
    ([[1, -1]], {}, ValueError, ["prompts[0][1] = -1"]),
    ([[1.5, 2.0]], {}, TypeError, ["prompts[0]", "float"]),
    (["hello"], {}, TypeError, ["prompts[0] is a string"]),
    ("hello", {}, TypeError, ["prompts must be a list"]),
    ([[[1, 2]]], {}, ValueError, ["prompts[0] has shape (1, 2)"]),
    (PROMPTS, dict(top_k=2.5), ValueError, ["top_k", "2.5"]),
    (PROMPTS, dict(top_k=0), ValueError, ["top_k", "0"]),
    (PROMPTS, dict(top_p=0.0), ValueError, ["top_p", "(0, 1]"]),
    (PROMPTS, dict(top_p=1.5), ValueError, ["top_p", "1.5"]),
    (PROMPTS, dict(top_p=float("nan")), ValueError, ["top_p", "nan"]),
    (PROMPTS, dict(temperature=-1.0), ValueError, ["temperature", "-1.0"]),
    (PROMPTS, dict(temperature=float("inf")), ValueError, ["temperature", "inf"]),
    (PROMPTS, dict(temperature=None), ValueError, ["temperature", "None"]),
    (PROMPTS, dict(max_new_tokens=0), ValueError, ["max_new_tokens", "0"]),
    (PROMPTS, dict(max_new_tokens=2.0), ValueError, ["max_new_tokens", "2.0"]),
    (PROMPTS, dict(max_new_tokens=40), ValueError, ["max_new_tokens (40)"]),
    (PROMPTS, dict(num_generations=0), ValueError, ["num_generations", "0"]),
    (PROMPTS, dict(num_generations=2.5), ValueError, ["num_generations", "2.5"]),
    (PROMPTS, dict(eos_token_id=VOCAB + 5), ValueError, [str(VOCAB + 5), "vocabulary"]),
    (PROMPTS, dict(pad_token_id=-2), ValueError, ["-2", "vocabulary"]),
    (PROMPTS, dict(seed="abc"), TypeError, ["seed"]),
]


@pytest.mark.parametrize("prompts,kwargs,error,words", BAD_GENERATE,
                         ids=[f"{i}-{list(b[1]) or 'prompts'}" for i, b in
                              enumerate(BAD_GENERATE)])
def test_bad_generate_argument_is_named(model, prompts, kwargs, error, words):
  args = dict(GOOD, **kwargs)
  with pytest.raises(error) as e:
    sampling.generate(model, prompts, **args)
  for w in words:
    assert w in str(e.value), str(e.value)


def test_numpy_prompt_array_is_accepted(model):
  a = sampling.generate(model, np.array([[1, 2, 3], [4, 5, 6]], np.int32), **GOOD)
  b = sampling.generate(model, [[1, 2, 3], [4, 5, 6]], **GOOD)
  np.testing.assert_array_equal(a.tokens, b.tokens)


BAD_FORWARD = [
    # (input_ids, kwargs, error, words)
    (np.ones((2, 5), np.int32), dict(attention_mask=np.ones((2, 4))), ValueError,
     ["attention_mask has shape (2, 4)", "input_ids has shape (2, 5)"]),
    (np.ones((2, 5), np.int32), dict(positions=np.zeros((5,), np.int32)), ValueError,
     ["positions has shape (5,)"]),
    (np.ones((5,), np.int32), {}, ValueError, ["input_ids must be", "(5,)"]),
    (np.ones((2, 5), np.float32), {}, TypeError, ["input_ids", "float32"]),
    (np.array([[1, 2, VOCAB]], np.int32), {}, ValueError,
     ["input_ids[0, 2]", str(VOCAB), "vocabulary"]),
]


@pytest.mark.parametrize("ids,kwargs,error,words", BAD_FORWARD,
                         ids=[w[3][0].split()[0] for w in BAD_FORWARD])
def test_bad_model_argument_is_named(model, ids, kwargs, error, words):
  with pytest.raises(error) as e:
    model(ids, **kwargs)
  for w in words:
    assert w in str(e.value), str(e.value)


def test_shape_check_also_under_jit(model):
  from flax import nnx
  graphdef, state = nnx.split(model)
  f = jax.jit(lambda s, ids, m: nnx.merge(graphdef, s)(ids, attention_mask=m))
  with pytest.raises(ValueError, match="attention_mask has shape"):
    f(state, jnp.ones((2, 5), jnp.int32), jnp.ones((2, 6), bool))
