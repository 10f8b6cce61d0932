"""LoRA adapters on the decoder's projections, read and written in the PEFT format.

LoRA (Hu et al. 2021, arXiv:2106.09685) trains a low-rank update of a frozen
projection: `y = x W (+ b) + scale * dropout(x) A B`, A [in, r], B [r, out],
scale = alpha / r (alpha / sqrt(r) with rsLoRA). A starts uniform in
+-1/sqrt(in) and B at zero (PEFT's defaults), so training starts at the base
model. The update is computed in the adapters' dtype (float32 by default, also
over a bfloat16 base) and the sum cast back, as PEFT does.

How it plugs in (no second copy of any weight):
  * `apply(model, config)` attaches an `Adapter` to every targeted `Dense`; the
    adapters' A and B are `nnx.LoRAParam`s, the only parameters that
    `framework.train` then differentiates and keeps optimiser state for.
  * `disable(graphdef, params)` is the base model (adapters dropped, the same
    arrays): the reference policy of KL terms and DPO.
  * `merge(model)` folds the adapters into the kernels (a plain `Decoder` for
    `hf.save_pretrained`); `save_peft` / `load_peft` write and read the
    `adapter_model.safetensors` + `adapter_config.json` that
    `peft.PeftModel.from_pretrained(base, dir)` reads.
  * Dropout runs only in a graphdef marked by `training(graphdef, params)`;
    its keys (a `DropoutKey` per adapter) are folded with the step and
    micro-batch inside the update (`fold_dropout_keys`).

We wrote these ~200 lines rather than use `qwix.LoraProvider`: qwix (0.1.8)
intercepts one method of the model (adapters silently absent from
`Decoder.forward`, which training and the sampler call, unless told), gives
adapters the base's dtype, keeps dropout RNG state in the modules (and drops
out in sampling too), and copies the kernel's logical axes onto A and B
unchanged (the rank dimension would be sharded).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from alignax.framework.config import as_dtype
from alignax.framework.model import Dense

# The projections LoRA may target, named as in transformers (and PEFT's
# `target_modules`).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_PEFT_PREFIX = "base_model.model.model."
_PEFT_KEY = re.compile(r"^base_model\.model\.model\.(.+)\.lora_([AB])\.weight$")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r >= 1, alpha, dropout (on the adapter's input, training only),
  target_modules (names in `TARGETS`), use_rslora (scale alpha / sqrt(r)),
  dtype of A and B."""

  rank: int
  alpha: float = 16.0
  dropout: float = 0.0
  target_modules: tuple[str, ...] = TARGETS
  use_rslora: bool = False
  dtype: str = "float32"

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}.")
    if not self.alpha > 0:
      raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}.")
    unknown = [t for t in self.target_modules if t not in TARGETS]
    if unknown or not self.target_modules:
      raise ValueError(f"LoRA target_modules {list(self.target_modules)}: each must be one"
                       f" of {list(TARGETS)} (at least one).")
    # One spelling per set of targets (configs compare equal, checkpoints match).
    object.__setattr__(self, "target_modules",
                       tuple(t for t in TARGETS if t in self.target_modules))
    as_dtype(self.dtype)

  @property
  def scale(self) -> float:
    return self.alpha / (self.rank ** 0.5 if self.use_rslora else self.rank)


class DropoutKey(nnx.Variable):
  """Raw PRNG key data (uint32) of an adapter's dropout; never trained."""


class Adapter(nnx.Module):
  """`adapter(x [.., in], y [.., out]) -> y + scale * dropout(x) A B` in y's dtype."""

  def __init__(self, din: int, dout: int, axes, config: LoraConfig, *, key):
    key_a, key_d = jax.random.split(key)
    dtype = as_dtype(config.dtype)
    bound = 1.0 / din ** 0.5  # PEFT: kaiming_uniform(a=sqrt(5)) of A
    # A and B are sharded like the kernel's input and output; the rank is replicated.
    self.a = nnx.LoRAParam(jax.random.uniform(key_a, (din, config.rank), dtype, -bound, bound),
                           logical_axes=(axes[0], None))
    self.b = nnx.LoRAParam(jnp.zeros((config.rank, dout), dtype), logical_axes=(None, axes[1]))
    self.config = config
    self.training = False
    self.dropout_key = (DropoutKey(jax.random.key_data(key_d)) if config.dropout
                        else nnx.data(None))

  def __call__(self, x, y):
    h = x.astype(self.a.dtype)
    rate = self.config.dropout
    if self.training and rate:
      key = jax.random.wrap_key_data(self.dropout_key[...])
      h = jnp.where(jax.random.bernoulli(key, 1.0 - rate, h.shape), h / (1.0 - rate), 0)
    delta = jnp.dot(jnp.dot(h, self.a[...]), self.b[...]) * self.config.scale
    return (y + delta).astype(y.dtype)


def adapted(model) -> Iterator[tuple[tuple, Dense]]:
  """(path, Dense) of every projection that carries an adapter."""
  for path, module in nnx.iter_modules(model):
    if isinstance(module, Dense) and module.lora is not None:
      yield path, module


def apply(model, config: LoraConfig, *, seed: int = 0, paths=None):
  """Attaches fresh adapters to `model`'s targeted projections (in place) and returns it.

  paths: optional set of module paths (e.g. ("layers", 0, "self_attn", "q_proj"))
    to adapt instead of every targeted one. Call `sharding.shard_model` after
    this on a mesh: new adapters are created on the default device.
  """
  key = jax.random.key(seed)
  count = 0
  for path, module in nnx.iter_modules(model):
    if not (isinstance(module, Dense) and path and path[-1] in config.target_modules):
      continue
    if paths is not None and tuple(path) not in paths:
      continue
    if module.lora is not None:
      raise ValueError(f"{'/'.join(map(str, path))} already has a LoRA adapter.")
    din, dout = module.kernel.shape
    axes = module.kernel.get_metadata()["logical_axes"]
    module.lora = Adapter(din, dout, axes, config, key=jax.random.fold_in(key, count))
    count += 1
  if not count:
    raise ValueError(f"No projection of the model matches LoRA target_modules"
                     f" {list(config.target_modules)}.")
  return model


def config_of(model) -> LoraConfig | None:
  """The model's `LoraConfig` (None without adapters)."""
  configs = {m.lora.config for _, m in adapted(model)}
  if len(configs) > 1:
    raise ValueError(f"The model's adapters have different configs: {configs}.")
  return configs.pop() if configs else None


# ------------------------------------------------------- trainable / frozen
def has_adapters(params: nnx.State) -> bool:
  return bool(jax.tree.leaves(nnx.filter_state(params, nnx.LoRAParam)))


def partition(params: nnx.State):
  """(adapter parameters, everything else) of a model state with adapters."""
  return nnx.split_state(params, nnx.LoRAParam, ...)


def combine(trainable: nnx.State, frozen: nnx.State) -> nnx.State:
  return nnx.merge_state(trainable, frozen)


def fold_dropout_keys(params: nnx.State, *data) -> nnx.State:
  """`params` with every `DropoutKey` folded with `data` (ints / int32 scalars)."""

  def fold(var):
    if not isinstance(var, DropoutKey):
      return var
    key = jax.random.wrap_key_data(var[...])
    for d in data:
      key = jax.random.fold_in(key, d)
    return var.replace(jax.random.key_data(key))

  return jax.tree.map(fold, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def training(graphdef, params):
  """`graphdef` with adapter dropout switched on (for the update's forward)."""
  if not has_adapters(params):
    return graphdef
  model = nnx.merge(graphdef, params)
  for _, module in adapted(model):
    module.lora.training = True
  return nnx.graphdef(model)


def disable(graphdef, params):
  """(graphdef, params) of the base model: adapters dropped, no array copied."""
  model = nnx.merge(graphdef, params)
  for _, module in adapted(model):
    module.lora = None
  return nnx.split(model)


def merge(model):
  """A new plain model with W + scale * A B in each adapted kernel (`model` unchanged)."""
  deltas = {}
  for path, module in adapted(model):
    a, b = (jnp.asarray(v[...], jnp.float32) for v in (module.lora.a, module.lora.b))
    deltas[tuple(path) + ("kernel",)] = module.lora.config.scale * (a @ b)
  graphdef, params = disable(*nnx.split(model))

  def fold(path, var):
    delta = deltas.get(tuple(p.key if hasattr(p, "key") else p.idx for p in path))
    if delta is None:
      return var
    return var.replace((var[...].astype(jnp.float32) + delta).astype(var.dtype))

  params = jax.tree_util.tree_map_with_path(
      fold, params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, params)


# ------------------------------------------------------------- PEFT format
def _peft_name(path, which: str) -> str:
  return f"{_PEFT_PREFIX}{'.'.join(map(str, path))}.lora_{which}.weight"


def save_peft(model, path: str, *, base_model_name_or_path: str | None = None) -> None:
  """Writes the adapters as `adapter_model.safetensors` + `adapter_config.json`
  (PEFT's LoRA format: `PeftModel.from_pretrained(base, path)` loads them)."""
  config = config_of(model)
  if config is None:
    raise ValueError("save_peft: the model has no LoRA adapters (see lora.apply).")
  tensors = {}
  for p, module in adapted(model):
    for which, var in (("A", module.lora.a), ("B", module.lora.b)):
      tensors[_peft_name(p, which)] = np.ascontiguousarray(np.asarray(jax.device_get(var[...])).T)
  peft_config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
      "target_modules": sorted(config.target_modules), "use_rslora": config.use_rslora,
      "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
      "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
      "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "inference_mode": True,
  }
  os.makedirs(path, exist_ok=True)
  tmp = os.path.join(path, ADAPTER_FILE + ".tmp")
  save_file(tensors, tmp, metadata={"format": "pt"})
  os.replace(tmp, os.path.join(path, ADAPTER_FILE))
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(peft_config, f, indent=2)


# adapter_config.json settings that alignax cannot reproduce, with the value it needs.
_UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "bias": "none",
                "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
                "lora_bias": False, "layer_replication": None, "target_parameters": None,
                "trainable_token_indices": None}


def read_peft_config(path: str, *, dtype: str = "float32") -> LoraConfig:
  """The `LoraConfig` of a PEFT adapter directory (clear errors if unsupported)."""
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(f"No {CONFIG_FILE} in {path!r}: expected a directory written by"
                            " PEFT's save_pretrained (or lora.save_peft).")
  with open(file) as f:
    peft = json.load(f)
  if peft.get("peft_type") != "LORA":
    raise ValueError(f"{file}: peft_type is {peft.get('peft_type')!r}; only LORA adapters load.")
  for key, needed in _UNSUPPORTED.items():
    value = peft.get(key)
    if value is not None and value != needed and value not in ([], {}):
      raise ValueError(f"{file}: {key}={peft[key]!r} is not supported (alignax needs"
                       f" {needed!r}).")
  with safe_open(os.path.join(path, ADAPTER_FILE), framework="numpy") as f:
    names = list(f.keys())
  targets = sorted({_module_path(n, file)[-1] for n in names})
  return LoraConfig(rank=int(peft["r"]), alpha=float(peft["lora_alpha"]),
                    dropout=float(peft.get("lora_dropout") or 0.0),
                    target_modules=tuple(targets), use_rslora=bool(peft.get("use_rslora")),
                    dtype=dtype)


def _module_path(name: str, where: str) -> tuple:
  match = _PEFT_KEY.match(name)
  if not match:
    raise ValueError(f"{where}: tensor {name!r} is not a LoRA A/B weight of a decoder"
                     f" projection ({', '.join(TARGETS)}).")
  return tuple(int(p) if p.isdigit() else p for p in match.group(1).split("."))


def load_peft(model, path: str, *, seed: int = 0):
  """Attaches the adapters of a PEFT LoRA directory to `model` (in place); returns it."""
  config = read_peft_config(path)
  file = os.path.join(path, ADAPTER_FILE)
  with safe_open(file, framework="numpy") as f:
    tensors = {n: f.get_tensor(n) for n in f.keys()}
  paths = {_module_path(n, file) for n in tensors}
  apply(model, config, seed=seed, paths=paths)
  found = {tuple(p) for p, _ in adapted(model)}
  if found != paths:
    raise ValueError(f"{file}: adapters for modules this model does not have:"
                     f" {sorted(paths - found)[:3]}.")
  for p, module in adapted(model):
    for which, var in (("A", module.lora.a), ("B", module.lora.b)):
      name = _peft_name(p, which)
      if name not in tensors:
        raise KeyError(f"{file}: {name!r} is missing.")
      array = tensors[name].T
      if array.shape != var.shape:
        raise ValueError(f"{file}: {name!r} has shape {tensors[name].shape}; this model"
                         f" needs {var.shape[::-1]} (rank {config.rank}).")
      var.set_value(jnp.asarray(array, var.dtype))
  return model
