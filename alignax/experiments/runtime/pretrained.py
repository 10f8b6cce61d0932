"""Hugging Face folders in and out: the warm-up models (`build_or_load_hf`),
a pretrained checkpoint as an agent (`load_pretrained`) and the trained
models at the end (`export_models`)."""
from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Mapping, Sequence

from alignax.framework import run_records


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
