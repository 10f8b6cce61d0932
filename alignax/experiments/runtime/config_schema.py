"""Config validation: each config file keeps `SCHEMA = {"dotted.key": rule}`
(and optionally `CHECKS`, functions of the whole config returning an error
string or None) next to its defaults; `validate_config` applies them before
any work or compilation and raises one `ConfigError` listing every problem."""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable

import numpy as np


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


def describe_path(path: str) -> str:
  """What is at `path`, for error messages: names the first missing part."""
  if os.path.isdir(path):
    return "it is a directory"
  if os.path.isfile(path):
    return "it is a file"
  if os.path.lexists(path):
    return "it is neither a file nor a directory"
  return f"it does not exist (the nearest existing folder is {nearest_existing(path)})"


def nearest_existing(path: str) -> str:
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
    found = describe_path(value)
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


# Rules that several configs' SCHEMAs share.
POSITIVE, NON_NEGATIVE = integer(1), integer(0)
FRACTION = number(0, 1, lo_open=True, hi_open=True)
LEARNING_RATE = number(0, lo_open=True)
TOP_P = number(0, 1, lo_open=True)


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
