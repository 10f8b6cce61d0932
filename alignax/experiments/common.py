"""Wiring shared by the experiment binaries: config-flag checks, the warm-up
models' folders (`build_or_load_hf`), the resumable method x iteration loop of
the EM binaries (`run_phases`), their summaries and plots, the absl `main`."""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from alignax.framework import run_records


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:preset]` the way `config_flags` does."""
  path, _, preset = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_alignax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in config.items():
    out.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      out.extend(_keys(v, prefix + k + "."))
  return out


def _config_spec(argv: Sequence[str], default_config: str) -> str:
  """The `--config` value of `argv` (`--config=F` or `--config F`), else the default."""
  spec = default_config
  for i, arg in enumerate(argv[1:], 1):
    if arg.lstrip("-").startswith("config="):
      spec = arg.split("=", 1)[1]
    elif arg.lstrip("-") == "config" and arg.startswith("-") and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def check_config_overrides(argv: Sequence[str], default_config: str) -> None:
  """Exits with one clear message if a `--config.x=...` names no config key.

  (ml_collections otherwise fails with a bare AttributeError traceback.) Must
  run before `config_flags.DEFINE_config_file`, which applies the overrides of
  `sys.argv` as soon as it is defined.
  """
  spec = _config_spec(argv, default_config)
  overrides = []
  for arg in argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    if arg.startswith("-") and name.startswith("config."):
      overrides.append(name[len("config."):])
  if not overrides:
    return
  valid = _keys(load_config_file(spec))
  unknown = [o for o in overrides if o not in valid]
  if unknown:
    hints = "".join(
        f"\n  config.{u}: did you mean config.{m[0]}?"
        for u in unknown if (m := difflib.get_close_matches(u, valid, n=1)))
    leaves = ", ".join(sorted(valid))
    sys.exit(f"Unknown config key(s): {', '.join('config.' + u for u in unknown)}.{hints}\n"
             f"Valid keys of {spec}: {leaves}")


# ---------------------------------------------------------------------------
# Config validation: each config file keeps `SCHEMA = {"dotted.key": rule}`
# (and optionally `CHECKS`, functions of the whole config returning an error
# string or None) next to its defaults; `validate_config` applies them before
# any work or compilation and raises one `ConfigError` listing every problem.


class ConfigError(ValueError):
  """A config value has the wrong type, range or choice."""


class Rule:
  """`rule(value)` returns None if `value` is allowed, else what it must be."""

  def __init__(self, test: Callable, expect: str | Callable[[], str]):
    self._test, self._expect = test, expect

  @property
  def expect(self) -> str:
    return self._expect() if callable(self._expect) else self._expect

  def __call__(self, value) -> str | None:
    try:
      ok = bool(self._test(value))
    except (TypeError, ValueError):
      ok = False
    return None if ok else self.expect


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
  return (_is_int(v) or isinstance(v, (float, np.floating))) and bool(np.isfinite(v))


def _bounds(lo, hi, lo_open, hi_open) -> tuple[str, Callable]:
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {lo}")
  if hi is not None:
    parts.append(f"{'<' if hi_open else '<='} {hi}")

  def within(v):
    return ((lo is None or (v > lo if lo_open else v >= lo)) and
            (hi is None or (v < hi if hi_open else v <= hi)))
  return " and ".join(parts), within


def integer(lo=None, hi=None) -> Rule:
  text, within = _bounds(lo, hi, False, False)
  return Rule(lambda v: _is_int(v) and within(v), "an integer" + (f" {text}" if text else ""))


def number(lo=None, hi=None, *, lo_open=False, hi_open=False) -> Rule:
  text, within = _bounds(lo, hi, lo_open, hi_open)
  return Rule(lambda v: _is_number(v) and within(v),
              "a finite number" + (f" {text}" if text else ""))


def boolean() -> Rule:
  return Rule(lambda v: isinstance(v, (bool, np.bool_)), "True or False")


def string() -> Rule:
  return Rule(lambda v: isinstance(v, str), "a string")


def _names(choices) -> list[str]:
  """`choices` is a collection or 'module:attribute' (resolved when checked,
  so config files need not import the binaries that own registries)."""
  if isinstance(choices, str):
    module, _, attr = choices.partition(":")
    choices = getattr(importlib.import_module(module), attr)
  return sorted(choices)


def one_of(choices) -> Rule:
  return Rule(lambda v: isinstance(v, str) and v in _names(choices),
              lambda: "one of " + ", ".join(map(repr, _names(choices))))


def many_of(choices) -> Rule:
  """A non-empty tuple/list whose every entry is one of `choices`."""
  return Rule(lambda v: (isinstance(v, (tuple, list)) and len(v) > 0 and
                         all(x in _names(choices) for x in v)),
              lambda: "a non-empty tuple of names from " + ", ".join(
                  map(repr, _names(choices))))


def optional(rule: Rule) -> Rule:
  """None, or what `rule` allows."""
  return Rule(lambda v: v is None or rule(v) is None, lambda: f"None or {rule.expect}")


def _what_is(path: str) -> str:
  """What is at `path`, for error messages: names the first missing part."""
  if os.path.isdir(path):
    return "it is a directory"
  if os.path.isfile(path):
    return "it is a file"
  if os.path.lexists(path):
    return "it is neither a file nor a directory"
  return f"it does not exist (the nearest existing folder is {_nearest_existing(path)})"


def _nearest_existing(path: str) -> str:
  """`path` made absolute, or its nearest ancestor that exists."""
  path = os.path.abspath(path)
  while not os.path.lexists(path):
    path = os.path.dirname(path)
  return path


class PathRule(Rule):
  """A `Rule` on a path whose message also says what is there now (and, for a
  directory, that it lacks the file `holding`)."""

  def __init__(self, test: Callable, expect: str, holding: str = ""):
    super().__init__(test, expect)
    self._holding = holding

  def __call__(self, value) -> str | None:
    expect = super().__call__(value)
    if expect is None or not isinstance(value, str):
      return expect
    found = _what_is(value)
    if self._holding and os.path.isdir(value):
      found += f" without {self._holding}"
    return f"{expect}; {found}"


def directory_or_empty(holding: str = "", what: str = "") -> Rule:
  """'' (meaning: build or train it here) or an existing directory, holding the
  file `holding` if given (`what` names such a directory in the message)."""
  def ok(v):
    return isinstance(v, str) and (v == "" or (
        os.path.isdir(v) and (not holding or os.path.isfile(os.path.join(v, holding)))))
  expect = "'' or an existing directory"
  if holding:
    expect = f"'' or {what or 'a directory'} (a directory holding {holding})"
  return PathRule(ok, expect, holding)


def model_dir_or_empty() -> Rule:
  """'' or a Hugging Face model folder (written by `save_pretrained`), or a
  llama.cpp `.gguf` file (`alignax.framework.hf` converts it once)."""
  folder = directory_or_empty("config.json", "a save_pretrained model folder")
  return PathRule(
      lambda v: folder(v) is None or (isinstance(v, str) and v.lower().endswith(".gguf")
                                      and os.path.isfile(v)),
      folder.expect + " or a .gguf file", "config.json")


def file_or_empty() -> Rule:
  """'' (meaning: not used) or an existing file."""
  return PathRule(lambda v: isinstance(v, str) and (v == "" or os.path.isfile(v)),
                  "'' or an existing file")


def check_workdir(workdir) -> None:
  """Raises ConfigError unless `workdir` is, or can be made, a writable folder.

  Called before any work, so a bad `--workdir` fails in a second with its path
  and what to do, not as an OSError from deep inside a run.
  """
  if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
    raise ConfigError(f"--workdir={workdir!r}: give a folder path (new, or an earlier"
                      " run's to resume it)")
  path = os.path.abspath(os.fspath(workdir))
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={workdir}: {_what_is(path)}, not a folder; give a"
                      " folder path (new, or an earlier run's to resume it)")
  existing = _nearest_existing(path)
  if not os.path.isdir(existing):
    raise ConfigError(f"--workdir={workdir}: {existing} is a file, so the folder cannot"
                      " be made there; choose another path")
  if not os.access(existing, os.W_OK | os.X_OK):
    where = "" if existing == path else f" (its nearest existing folder {existing})"
    raise ConfigError(f"--workdir={workdir}{where} is not writable by this user; choose"
                      " a folder you can write, e.g. --workdir=runs/<name>")


def make_workdir(workdir) -> None:
  """`check_workdir`, then creates the folder."""
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)


def lora_config() -> ml_collections.ConfigDict:
  """The `lora` block every LLM binary's config holds (see `apply_lora`).

  rank 0 = full fine-tuning. With rank > 0 only the adapters train (base
  frozen), the sampler runs base + adapters unmerged, a KL / DPO reference is
  the base with the adapters disabled. init_from: a PEFT adapter directory to
  continue training from.
  """
  return ml_collections.ConfigDict(dict(
      rank=0, alpha=16.0, dropout=0.0, init_from="",
      target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                      "down_proj")))


def lora_schema(prefix: str = "lora") -> dict[str, "Rule"]:
  """SCHEMA rules of a `lora_config()` block at `prefix`."""
  return {f"{prefix}.rank": integer(0), f"{prefix}.alpha": number(0, lo_open=True),
          f"{prefix}.dropout": number(0, 1, hi_open=True),
          f"{prefix}.init_from": directory_or_empty("adapter_config.json",
                                                    "a PEFT adapter folder"),
          f"{prefix}.target_modules": many_of("alignax.framework.lora:TARGETS")}


# Rules that several configs' SCHEMAs share.
POSITIVE, NON_NEGATIVE = integer(1), integer(0)
FRACTION = number(0, 1, lo_open=True, hi_open=True)
LEARNING_RATE = number(0, lo_open=True)
TOP_P = number(0, 1, lo_open=True)


def builtin_model_rules(prefix: str = "model") -> dict:
  """Rules of the built-in decoder's size keys under `prefix`."""
  rules = {f"{prefix}.{k}": POSITIVE for k in (
      "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
      "max_position_embeddings")}
  rules[f"{prefix}.tie_word_embeddings"] = boolean()
  return rules


# Precision and rematerialisation, the same keys in every LLM binary's
# config (read by `model_options`): `model.param_dtype` (weights and Adam
# moments) and `model.dtype` (matmuls): float32/float32, bfloat16 compute with
# float32 master weights (float32/bfloat16), or bfloat16 throughout; and
# `train.remat`, the decoder layers' rematerialisation in the updates: none |
# full | dots_saveable | dots_with_no_batch_dims_saveable (the same values,
# less activation memory).
PRECISION = dict(param_dtype="float32", dtype="float32")
REMAT = dict(remat="none")


def precision_schema() -> dict:
  """SCHEMA rules of the `PRECISION` keys (under `model`) and `REMAT` (under `train`)."""
  dtype = one_of("alignax.framework.config:DTYPE_NAMES")
  return {"model.param_dtype": dtype, "model.dtype": dtype,
          "train.remat": one_of("alignax.framework.config:REMAT_POLICIES")}


def _lookup(config, key: str):
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def _schema_of(config_file: str):
  path = config_file.partition(":")[0]
  spec = importlib.util.spec_from_file_location("_alignax_config_schema", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return getattr(module, "SCHEMA", {}), getattr(module, "CHECKS", ())


def validate_config(config, config_file: str) -> None:
  """Checks `config` against the `SCHEMA` and `CHECKS` of `config_file`.

  Called first thing by each binary's `run`, so a bad value fails in a second,
  not after minutes of work or inside a JAX trace.

  Raises:
    ConfigError: listing every key that is missing or out of range, with its
      value and what it must be.
  """
  schema, checks = _schema_of(config_file)
  errors = []
  for key, rule in schema.items():
    try:
      value = _lookup(config, key)
    except (KeyError, AttributeError):
      errors.append(f"config.{key} is missing")
      continue
    expect = rule(value)
    if expect is not None:
      errors.append(f"config.{key}={value!r}: must be {expect}")
  if not errors:  # cross-key checks assume each key is valid on its own
    errors += [m for m in (check(config) for check in checks) if m]
  if errors:
    raise ConfigError("Invalid config (" + os.path.basename(config_file.partition(":")[0])
                      + "):\n  " + "\n  ".join(errors))


def apply_lora(model, lora_config, *, seed: int = 0):
  """Attaches LoRA adapters per a config's `lora` block and returns the model.

  `lora_config`: rank (0 = none: full fine-tuning), alpha, dropout,
  target_modules, init_from (a PEFT adapter directory to continue from; its
  adapter_config.json sets rank and alpha, and a rank > 0 here must agree).
  See `alignax.framework.lora`.
  """
  from alignax.framework import lora  # pylint: disable=g-import-not-at-top

  c = lora_config
  if c.init_from:
    lora.load_peft(model, c.init_from, seed=seed)
    loaded = lora.config_of(model)
    if c.rank and c.rank != loaded.rank:
      raise ValueError(f"config.lora.rank={c.rank} but the adapter in"
                       f" config.lora.init_from={c.init_from!r} has rank {loaded.rank};"
                       " set config.lora.rank=0 (take the adapter's) or the same rank.")
    return model
  if not c.rank:
    return model
  return lora.apply(model, lora.LoraConfig(
      rank=int(c.rank), alpha=float(c.alpha), dropout=float(c.dropout),
      target_modules=tuple(c.target_modules)), seed=seed)


def setup_mesh(config):
  """The one call each binary makes before any JAX work: joins the other
  processes when the environment asks for it (`sharding.
  maybe_initialize_distributed`: `JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES`
  + `JAX_PROCESS_ID`, or `ALIGNAX_DISTRIBUTED=1`), then returns the device mesh
  of `config.mesh` (data/fsdp/tensor sizes), or None when the config has no
  mesh or every axis is 1."""
  from alignax.framework import sharding  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed()
  sizes = config.get("mesh")
  sizes = sizes.to_dict() if hasattr(sizes, "to_dict") else dict(sizes or {})
  if all(v == 1 for v in sizes.values()):
    return None
  return sharding.make_mesh(**sizes)


def model_options(config) -> dict:
  """`hf.from_pretrained` keywords for precision and remat from a binary's
  config: `model.param_dtype` (weights, optimiser moments), `model.dtype`
  (matmuls) and `train.remat` (decoder-layer rematerialisation; see
  `PRECISION`, `REMAT`), each optional (float32 / float32 / none when a
  config has no such key)."""
  model = config.get("model", {}) or {}
  train = config.get("train", {}) or {}
  return dict(dtype=model.get("param_dtype", "float32"),
              compute_dtype=model.get("dtype", "float32"),
              remat=train.get("remat", "none"))


def read_metrics(workdir: str) -> list[dict]:
  return run_records.read_metrics(workdir)


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops metric rows logged after `last_step` (by a run killed before it
  could checkpoint them) and duplicates, so a resumed run logs each step once
  (see `framework.run_records.truncate_metrics`)."""
  run_records.truncate_metrics(workdir, last_step)


SAMPLES_FILE = "samples.jsonl"


@run_records.writer_only
def write_samples(workdir: str, step: int, samples: Sequence[dict], writer=None) -> None:
  """Appends `{"step": step, **sample}` lines to `samples.jsonl` and, given a
  `MetricWriter`, shows them as TensorBoard text (tag `samples`)."""
  if not samples:
    return
  from alignax.framework.run_records import _to_builtin  # pylint: disable=g-import-not-at-top
  rows = [_to_builtin({"step": int(step), **s}) for s in samples]
  with open(os.path.join(workdir, SAMPLES_FILE), "a") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  if writer is not None:
    writer.write_text(step, "samples", "\n\n".join(
        "\n".join(f"**{k}**: `{v}`" for k, v in r.items() if k != "step") for r in rows))


@run_records.writer_only
def truncate_samples(workdir: str, keep_through: int) -> None:
  """Drops `samples.jsonl` lines of steps after `keep_through` (a resumed run
  writes them again)."""
  path = os.path.join(workdir, SAMPLES_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= keep_through)
  os.replace(tmp, path)


@run_records.writer_only
def plot_curves(workdir: str, filename: str, panels: dict[str, Sequence[str]],
                title: str = "") -> str:
  """One panel per entry {panel title: [metric keys]} of metrics.jsonl vs step."""
  # A bare Figure draws without pyplot, so it neither needs a display nor
  # switches the backend of a notebook that imported us.
  from matplotlib.figure import Figure

  rows = read_metrics(workdir)
  fig = Figure(figsize=(5 * len(panels), 3.5))
  axes = fig.subplots(1, len(panels), squeeze=False)
  for ax, (panel, keys) in zip(axes[0], panels.items()):
    for key in keys:
      pts = [(r["step"], r[key]) for r in rows if key in r]
      if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, label=key)
    ax.set_title(panel)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=110)
  return path


def build_or_load_hf(dirs: Mapping[str, str], build: Callable | None = None,
                     options: Mapping[str, Any] | None = None):
  """Loads the Hugging Face folders `dirs` {name: folder}; builds them first if needed.

  When a folder lacks `model.safetensors`, `build() -> ({name: model}, tokenizer)`
  runs (e.g. a tokenizer and a warm-started decoder); each model is saved with
  the tokenizer to `<folder>.tmp` and then moved into place, so a killed build
  never leaves a half-written folder. Every model is loaded back from disk, so
  a resumed run starts from exactly the saved weights. With several
  processes only the writer (process 0) builds; the others wait for it at a
  barrier, then all load the same folders.

  `options`: `hf.from_pretrained` keywords for the loaded models (precision
  and remat: `model_options(config)`).

  Returns ({name: Decoder}, the first folder's tokenizer); the folders must
  share one tokenizer (the same vocabulary size).
  """
  from alignax.framework import hf  # pylint: disable=g-import-not-at-top
  missing = [p for p in dirs.values() if not os.path.exists(os.path.join(p, "model.safetensors"))]
  if missing and build is None:
    raise FileNotFoundError(f"No model.safetensors in {missing}; give folders written by"
                            " save_pretrained (config.json, *.safetensors, tokenizer files).")
  if missing and run_records.is_writer():
    models, tokenizer = build()
    for name, path in dirs.items():
      shutil.rmtree(path + ".tmp", ignore_errors=True)
      hf.save_pretrained(models[name], path + ".tmp")
      tokenizer.save_pretrained(path + ".tmp")
    for path in dirs.values():
      shutil.rmtree(path, ignore_errors=True)
      os.replace(path + ".tmp", path)
  # Always (not only when something was missing): every process must reach it.
  run_records.barrier("alignax: warm-up folders built")
  models = {name: hf.from_pretrained(path, **(options or {})) for name, path in dirs.items()}
  tokenizers = [hf.load_tokenizer(path, models[name].config) for name, path in dirs.items()]
  if any(len(t) != len(tokenizers[0]) for t in tokenizers):
    raise ValueError(f"The folders {sorted(dirs.values())} must share one tokenizer.")
  return models, tokenizers[0]


def load_pretrained(path: str, markers: Sequence[str]):
  """A pretrained checkpoint as an agent's starting point: (Decoder, tokenizer).

  The agent's `markers` are added as special tokens and the embedding / LM
  head grown (`framework.vocab.add_marker_tokens`); a tokenizer without a pad
  token pads with its EOS (padded positions are masked everywhere).
  """
  from alignax.framework import hf, vocab  # pylint: disable=g-import-not-at-top
  model = hf.from_pretrained(path)
  tokenizer = hf.load_tokenizer(path, model.config)
  if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
  model, _ = vocab.add_marker_tokens(model, tokenizer, markers)
  return model, tokenizer


def export_models(workdir: str, models: Mapping[str, Any], tokenizer,
                  sources: Mapping[str, str] | None = None, *,
                  adapters: bool = False) -> dict[str, str]:
  """Writes each trained model {name: Decoder} to `<workdir>/final_<name>/`
  (weights, config, tokenizer with its chat template, generation config with
  every stop id) with `framework.hf.export_pretrained`; LoRA adapters are
  merged, and with `adapters=True` also saved alone in the PEFT format to
  `final_adapter/` (name "model") or `final_<name>_adapter/`, their base the
  `sources` folder. `sources` {name: the checkpoint it started from, or ''}
  supplies the generation config.

  Every process must call it (parameters sharded over several processes are
  gathered); only the writer process writes. Returns {folder name: path}.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from alignax.framework import hf, lora  # pylint: disable=g-import-not-at-top
  out = {}
  for name, model in models.items():
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, run_records.to_host(state))
    source = (sources or {}).get(name) or None
    folder = f"final_{name}"
    if lora.has_adapters(nnx.state(model)):  # LoRA: the adapters folded into the weights
      if adapters:
        adapter = "final_adapter" if name == "model" else f"final_{name}_adapter"
        out[adapter] = os.path.join(workdir, adapter)
        run_records.writer_only(lora.save_peft)(
            model, out[adapter], base_model_name_or_path=os.path.abspath(source or ""))
      model = lora.merge(model)
    stop_ids = hf.stop_token_ids(source, tokenizer, model.config)
    out[folder] = os.path.join(workdir, folder)
    run_records.writer_only(hf.export_pretrained)(
        model, out[folder], tokenizer=tokenizer, source=source, stop_ids=stop_ids)
  return out


def iteration_slice(pool: Sequence, iteration: int, count: int) -> Sequence:
  """The `count` items of `pool` that EM iteration `iteration` (0-based) works on:
  a window moving by `count` per iteration, wrapping round at the pool's end."""
  start = (iteration * count) % max(len(pool) - count + 1, 1)
  return pool[start:start + count]


def check_finite(state, where: str, ckpt=None, workdir: str | None = None) -> None:
  """Stops the run if `state` holds a NaN/inf (a diverged update), before it is
  checkpointed, so the last good checkpoint of `ckpt` stays the newest."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  # One host sync for the whole state.
  if floats and not bool(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats]))):
    if ckpt is None:
      kept = "Nothing was saved from it"
    else:
      last = ckpt.latest_step()
      kept = (f"The last good checkpoint ({'none' if last is None else f'step {last}'})"
              f" is kept in {workdir}/checkpoints")
    raise FloatingPointError(
        f"Non-finite values (NaN or inf) in the state after {where}. {kept}; lower the"
        " learning rates or check the weights, then re-run to resume.")


def run_phases(workdir: str, fresh, phases: Mapping[str, Callable], iterations: int, *,
               start: Callable[[], dict], start_scores: Callable[[dict, str], dict],
               summarize: Callable[[dict], dict], plot: Callable[[dict], Any], desc: str,
               postfix: Mapping[str, str], stop_after: int | None = None,
               progress: bool = True,
               on_method_end: Callable[[str, Any], None] | None = None) -> dict:
  """The resumable loop of the EM binaries: each method of `phases` {method:
  phase}, in order, runs `iterations` phases from a copy of the warm-up state
  `fresh` (a pytree).

  A phase is `phase(state, iteration, index, extras) -> (state, stats,
  scores)` (index = phase number over all methods; `scores` its held-out
  evaluation). After every phase the state and `extras` (a JSON-able dict
  the phases may update) are checkpointed under `workdir/checkpoints`, and the
  row `{"iteration", "<method>/<stat or score>"}` goes to metrics.jsonl at step
  index + 1; a re-run resumes after the last checkpoint.

  On a fresh run `start() -> extras` evaluates the warm-up (it holds "seconds",
  the time so far); `extras["curves"][method]` collects each phase's scores
  and `start_scores(extras, method)` gives a method's iteration-0 scores
  (logged at step 0). `stop_after` ends after that many phases, as a kill
  would. At the end: `plot(extras)`, and `summarize(extras)` is returned and,
  once every phase is done, written to `workdir/summary.json`. `postfix`:
  {progress-bar label: score key}. `on_method_end(method, state)` runs after
  a method's last phase, before its checkpoint (so a run killed in between
  runs it again on resume); the binaries export their final models there.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from alignax.framework import checkpoint, run_records, train  # pylint: disable=g-import-not-at-top

  methods = list(phases)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  # Under LoRA checkpoints hold the adapters and their optimiser state only.
  restored = ckpt.restore_latest(train.checkpoint_state(fresh))
  if restored is None:
    done, state, extras = 0, fresh, start()
    extras.setdefault("curves", {m: [] for m in methods})
  else:
    done, saved, extras = restored
    state = train.from_checkpoint_state(fresh, saved)
  truncate_metrics(workdir, done)
  writer = run_records.MetricWriter(workdir)
  if restored is None:
    writer.write(0, {f"{m}/{k}": v for m in methods for k, v in start_scores(extras, m).items()})
  total = len(methods) * iterations
  end = total if stop_after is None else min(total, done + stop_after)
  bar = tqdm.tqdm(range(done, end), initial=done, total=total, desc=desc, disable=not progress)
  for index in bar:
    method, it = methods[index // iterations], index % iterations
    if it == 0:
      # Every method starts from the warm-up (under LoRA: fresh adapters, same base).
      state = train.from_checkpoint_state(
          fresh, jax.tree.map(jnp.copy, train.checkpoint_state(fresh)))
    t0 = time.perf_counter()
    state, stats, scores = phases[method](state, it, index, extras)
    check_finite(state, f"{method} iteration {it + 1} (step {index + 1})", ckpt, workdir)
    extras["curves"][method].append(scores)
    extras["seconds"] += time.perf_counter() - t0
    writer.write(index + 1, {"iteration": it + 1,
                             **{f"{method}/{k}": v for k, v in {**stats, **scores}.items()}})
    bar.set_postfix(method=method, **{k: f"{scores[v]:.1f}" for k, v in postfix.items()})
    if on_method_end is not None and it == iterations - 1:
      on_method_end(method, state)
    ckpt.save(index + 1, train.checkpoint_state(state), extras)
  writer.close()
  ckpt.close()
  plot(extras)
  summary = summarize(extras)
  if end == total:
    run_records.write_summary(workdir, summary)
  return summary


def per_method_summary(extras: dict, methods: Sequence[str], main: str,
                       metrics: Mapping[str, str], start_scores: Callable) -> dict:
  """`<prefix>eval/<name>_{before,after,per_iteration}` for every method and
  `metrics` {name: score key}; the prefix is "" for `main`, "<method>/" else."""
  out = {}
  for m in methods:
    before, curve = start_scores(extras, m), extras["curves"][m]
    prefix = "" if m == main else f"{m}/"
    last = curve[-1] if curve else before
    for name, key in metrics.items():
      out[f"{prefix}eval/{name}_before"] = before[key]
      out[f"{prefix}eval/{name}_after"] = last[key]
      out[f"{prefix}eval/{name}_per_iteration"] = [c[key] for c in curve]
  return out


@run_records.writer_only
def plot_per_iteration(workdir: str, filename: str, curves: Mapping[str, Sequence[dict]],
                       start_of: Callable[[str], dict], panels: Mapping[str, str],
                       title: str, xlabel: str = "iteration (0 = warm-up)") -> None:
  """One panel per {score key: panel title}: each method's held-out score per
  iteration. curves: method -> per-iteration scores; start_of(method): the
  scores it starts from (iteration 0, the warm-up)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5 * len(panels), 3.5))
  for ax, (key, panel) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
    for method, curve in curves.items():
      ys = [start_of(method)[key]] + [c[key] for c in curve]
      ax.plot(range(len(ys)), ys, marker="o", label=method)
    ax.set_title(panel)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, filename), dpi=110)


def run_binary(run_fn, default_config: str, default_workdir: str) -> None:
  """The `__main__` of an experiment binary: `--config`, `--workdir`, absl app.

  `run_fn(config, workdir) -> summary dict`. Flags are defined only here, when
  run as a binary, so tests and notebooks can import several binaries side by
  side without duplicate-flag errors.
  """
  # Before JAX creates its CPU client: XLA sizes the intra-op thread pool from
  # NPROC, else from the CPUs in this process's affinity mask, and that count
  # decides how the Eigen dots (the weight gradients) and the YNNPACK reductions
  # split their sums. Pinned to the machine's CPU count, a seed gives the same
  # floats under taskset or a cpuset (tests/reliability/test_reproducible_launch.py).
  os.environ.setdefault("NPROC", str(os.cpu_count() or 1))
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  check_config_overrides(sys.argv, default_config)
  config_flags.DEFINE_config_file("config", default_config,
                                  "Experiment config (ml_collections file[:preset]).")
  flags.DEFINE_string("workdir", default_workdir, "Output folder; re-use it to resume.")

  def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    try:
      check_workdir(flags.FLAGS.workdir)
      # The schema lives in the default config file (a --config file of the
      # user's own holds only values).
      validate_config(flags.FLAGS.config, default_config)
      summary = run_fn(flags.FLAGS.config, flags.FLAGS.workdir)
    except ConfigError as e:
      sys.exit(str(e))
    print("\n".join(f"{k}: {v}" for k, v in summary.items()))

  app.run(main)
