"""Cross-lowering on a CPU host: every kernel and the whole GRPO update are
exported (`jax.export`) for `cuda` (Triton) and `tpu` (Mosaic, two chip
generations), so block-shape, layout and unsupported-op errors that the Pallas
interpreter never sees fail CI. Nothing runs: lowering only.

The Mosaic lowering asks the backend for the TPU generation, which a CPU host
cannot answer ("Unsupported TPU device kind: cpu"); `tpu_chip` patches
`tpu_info.get_tpu_info` to a given chip for the duration of one export.

Kernels reach the compiled Pallas path with `interpret=None`, which the
kernels decide when lowering (`lax.platform_dependent`): the interpreter for
CPU, the real kernel for `cuda` / `tpu` (see `alignax/kernels/_common.py`).
The parametrisation covers each factor (platform/chip, kernel, dtype, head
dim, GQA group, mask, length up to 8k) without the full cross product.
"""
import contextlib
import re
from unittest import mock

import jax
from jax import export
from jax._src.pallas.mosaic import tpu_info
import jax.numpy as jnp
import numpy as np
import pytest

from alignax import kernels
from alignax import objectives
from alignax.kernels import attention as attention_impl

TRITON = "__gpu$xla.gpu.triton"
MOSAIC = "tpu_custom_call"
CHIPS = {"v5e": tpu_info.ChipVersion.TPU_V5E,
         "v6e": tpu_info.ChipVersion.TPU_V6E,
         "v5p": tpu_info.ChipVersion.TPU_V5P}


@contextlib.contextmanager
def tpu_chip(name):
  info = tpu_info.get_tpu_info_for_chip(CHIPS[name], 1)
  with mock.patch.object(tpu_info, "get_tpu_info", lambda *a, **k: info):
    yield


def lowered_text(fn, args, target):
  """StableHLO text of `fn(*args)` exported for "cuda" or "tpu:<chip>"."""
  platform, _, chip = target.partition(":")
  checks = ([export.DisabledSafetyCheck.custom_call(TRITON)]
            if platform == "cuda" else [])
  ctx = tpu_chip(chip) if platform == "tpu" else contextlib.nullcontext()
  with ctx:
    exp = export.export(jax.jit(fn), platforms=[platform],
                        disabled_checks=checks)(*args)
    return exp.mlir_module()


def custom_calls(text):
  return re.findall(r"custom_call @([\w$.]+)", text)


def kernel_names(text):
  """Names of the Pallas kernels in the lowered module (both backends keep the
  pallas_call `name` in the custom call's attributes)."""
  return set(re.findall(r"block_sparse_(?:attention_)?(?:fwd|dq|dkv|decode)"
                        r"(?:_tpu)?", text))


def _mask(kind, t, q, k, block):
  if kind == "window_sinks":
    return kernels.BlockMask.local(t, 2 * block, sinks=4, block_q=block,
                                   block_k=block)
  if kind == "causal":
    return kernels.BlockMask.causal(t, block_q=block, block_k=block)
  if kind == "topk_hybrid":   # traced scores: built inside the exported fn
    return kernels.hybrid_block_mask(q, k, window=2 * block, sinks=4,
                                     top_k=2, block_q=block, block_k=block)
  raise ValueError(kind)


def _sds(shape, dtype):
  return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


# (target, dtype, head dim, GQA group, mask, length): every platform/chip sees
# both dtypes, both head dims, both groups and every mask; 8k appears on both
# platforms.
KERNEL_CASES = [
    ("cuda", "float32", 64, 1, "causal", 1024),
    ("cuda", "bfloat16", 128, 4, "window_sinks", 8192),
    ("cuda", "bfloat16", 64, 4, "topk_hybrid", 2048),
    ("cuda", "float32", 128, 1, "topk_hybrid", 1024),
    ("tpu:v5e", "bfloat16", 128, 1, "window_sinks", 1024),
    ("tpu:v5e", "float32", 64, 4, "topk_hybrid", 2048),
    ("tpu:v5e", "bfloat16", 64, 1, "causal", 8192),
    ("tpu:v6e", "float32", 128, 4, "causal", 1024),
    ("tpu:v6e", "bfloat16", 64, 4, "topk_hybrid", 1024),
    ("tpu:v6e", "float32", 64, 1, "window_sinks", 4096),
]


def _ids(case):
  return "-".join(str(x) for x in case)


def _attention_fns(mask_kind, t, block, impl):
  def fwd(q, k, v):
    m = _mask(mask_kind, t, q, k, block)
    return kernels.block_sparse_attention(q, k, v, m, implementation=impl)

  def fwd_bwd(q, k, v, do):
    out, vjp = jax.vjp(fwd, q, k, v)
    return out, vjp(do)
  return fwd, fwd_bwd


@pytest.mark.parametrize("case", KERNEL_CASES, ids=_ids)
def test_kernels_lower(case):
  """Forward, then forward + dQ + dK/dV, lower to the platform's kernels."""
  target, dtype, d, group, mask_kind, t = case
  impl = "pallas_gpu" if target == "cuda" else "pallas_tpu"
  call = TRITON if target == "cuda" else MOSAIC
  hkv = 2
  q = _sds((1, t, hkv * group, d), dtype)
  kv = _sds((1, t, hkv, d), dtype)
  fwd, fwd_bwd = _attention_fns(mask_kind, t, 128, impl)

  text = lowered_text(fwd, (q, kv, kv), target)
  assert custom_calls(text).count(call) == 1, custom_calls(text)
  assert "fwd" in "".join(kernel_names(text))

  text = lowered_text(fwd_bwd, (q, kv, kv, q), target)
  calls = custom_calls(text)
  assert calls.count(call) == 3, calls          # fwd, dQ, dK/dV
  names = "".join(sorted(kernel_names(text)))
  assert "dq" in names and "dkv" in names, names


@pytest.mark.parametrize("target,dtype,d,group,window", [
    ("cuda", "bfloat16", 128, 4, 1024),
    ("cuda", "float32", 64, 1, None),
    ("tpu:v5e", "bfloat16", 64, 4, 1024),
    ("tpu:v6e", "float32", 128, 1, None),
])
def test_decode_lowers(target, dtype, d, group, window):
  """One new token over an 8k cache: the split-K decode kernel on GPU, the
  prefill kernel with one padded query block on TPU (it has no decode
  kernel)."""
  cache, hkv = 8192, 2
  impl = "pallas_gpu" if target == "cuda" else "pallas_tpu"
  block_q = 16 if dtype == "bfloat16" or target == "cuda" else 8

  def step(q, k, v, kv_len):
    m = kernels.BlockMask.decode(kv_len, cache_len=cache, block_k=128,
                                 window=window, sinks=4 if window else 0,
                                 block_q=block_q)
    return kernels.block_sparse_attention(q, k, v, m, implementation=impl)

  args = (_sds((2, 1, hkv * group, d), dtype), _sds((2, cache, hkv, d), dtype),
          _sds((2, cache, hkv, d), dtype), _sds((2,), np.int32))
  text = lowered_text(step, args, target)
  calls = custom_calls(text)
  if target == "cuda":
    assert calls.count(TRITON) == 1 and "block_sparse_decode" in text, calls
  else:
    assert calls.count(MOSAIC) == 1, calls


def test_cpu_lowering_keeps_the_interpreter():
  """The same function lowered for CPU has no kernel custom call."""
  q = _sds((1, 256, 2, 64), "float32")
  fwd, _ = _attention_fns("causal", 256, 128, "pallas_gpu")
  exp = export.export(jax.jit(fwd), platforms=["cpu"])(q, q, q)
  assert not custom_calls(exp.mlir_module())


@pytest.mark.parametrize("target,block_q,block_k,message", [
    ("tpu:v5e", 4, 128, "divisible by 8 and 128"),
    ("cuda", 16, 48, "power of 2"),
])
def test_a_broken_block_shape_fails_lowering(monkeypatch, target, block_q,
                                             block_k, message):
  """The lowering tests have teeth: with the wrapper's block-shape guard
  switched off, a query block of 4 rows (TPU) or a key block of 48 (GPU)
  makes the export itself fail, although the interpreter runs both."""
  monkeypatch.setattr(attention_impl, "_check_lowerable",
                      lambda *a, **k: None)
  impl = "pallas_gpu" if target == "cuda" else "pallas_tpu"
  q = _sds((1, 480, 2, 64), "bfloat16")
  m = kernels.BlockMask.causal(480, block_q=block_q, block_k=block_k)
  fwd = lambda q, k, v: kernels.block_sparse_attention(  # noqa: E731
      q, k, v, m, implementation=impl)
  with pytest.raises(ValueError, match=message):
    lowered_text(fwd, (q, q, q), target)


# --- The whole GRPO update (model + fused log-probs + loss + optax) ---------

def _grpo_update_args(attention, target):
  from alignax.framework import train  # pylint: disable=g-import-not-at-top
  from alignax.framework.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from alignax.framework.model import Decoder  # pylint: disable=g-import-not-at-top

  kernel = "pallas_gpu" if target == "cuda" else "pallas_tpu"
  config = ModelConfig(
      vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=2,
      num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=1024,
      attention_impl=attention, sparse_window=128, sparse_sinks=4,
      sparse_top_k=1, sparse_block_q=128, sparse_block_k=128,
      sparse_implementation=kernel, dtype="bfloat16")
  optimizer = train.make_optimizer(1e-5, warmup_steps=1, total_steps=10)
  graphdef, state = jax.eval_shape(
      lambda: train.init_train_state(Decoder(config), optimizer))
  n, p, c = 4, 256, 256
  batch = dict(
      sequences=_sds((n, p + c), np.int32),
      attention_mask=_sds((n, p + c), bool),
      completion_tokens=_sds((n, c), np.int32),
      completion_mask=_sds((n, c), bool),
      old_logprobs=_sds((n, c), np.float32),
      advantages=_sds((n,), np.float32))
  update = train.make_grpo_update(
      graphdef, optimizer, loss=objectives.PolicyLossConfig(loss_type="dapo"),
      prompt_groups=2)
  return update, (state, batch)


@pytest.mark.parametrize("attention", ["dense", "block_sparse"])
@pytest.mark.parametrize("target", ["cuda", "tpu:v5e", "tpu:v6e"])
def test_grpo_update_lowers(attention, target):
  update, args = _grpo_update_args(attention, target)
  text = lowered_text(lambda s, b: update(s, b), args, target)
  calls = custom_calls(text)
  kernel_call = TRITON if target == "cuda" else MOSAIC
  if attention == "dense":
    assert kernel_call not in calls, calls
  else:
    # 2 layers x (prompt pass + completion pass) forwards, and their dQ and
    # dK/dV kernels in the backward pass.
    assert calls.count(kernel_call) >= 2 * 2 * 3, calls
