"""`--config` files and their `--config.x=...` overrides, read as
`ml_collections.config_flags` reads them."""
from __future__ import annotations

import difflib
import importlib.util
import sys
from typing import Sequence

import ml_collections


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
