"""Typed configs: each option declared once, checked once.

A binary's config file declares its options as a tree of frozen dataclasses
(`Section`s) whose fields are `option(default, rule, help)`: type (the
annotation), default, what it may hold (a `Rule`; by default the one of its
type) and what it means, in one place. From that tree:

- `config_dict(Config())` is the `ml_collections.ConfigDict` that the file's
  `get_config(preset)` starts from (presets then change values), so
  `--config=file.py:preset` and `--config.x=y` work as ml_collections does;
- `validate_config(config, file)` walks the fields, checks every value against
  its rule, reports keys that are missing or are no option, runs the file's
  `CHECKS` (functions of the whole typed config returning an error string or
  None: cross-key rules, options that do not apply to the chosen algorithm)
  and returns the frozen typed tree the binary reads (`config.train.steps`).
  It raises one `ConfigError` listing every problem, before any work or
  compilation.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import importlib
import importlib.util
import os
import types
import typing
from typing import Any, Callable

import ml_collections
import numpy as np
from ml_collections import config_dict as config_dict_lib


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


# Rules that several configs share.
POSITIVE, NON_NEGATIVE = integer(1), integer(0)
FRACTION = number(0, 1, lo_open=True, hi_open=True)
LEARNING_RATE = number(0, lo_open=True)
TOP_P = number(0, 1, lo_open=True)


def mapping_of() -> Rule:
  """A free-form mapping (e.g. model-specific keyword arguments checked by
  what receives them); any keys."""
  return Rule(lambda v: isinstance(v, collections.abc.Mapping), "a mapping of options")


# ------------------------------------------------------------ typed configs
class Section(collections.abc.Mapping):
  """Base of a config section: subclass it as a frozen dataclass whose fields
  are `option(...)`s (leaves) or `option(SubSection())` (nested sections).

  Attribute access is the typed way to read it (`config.train.steps`); it also
  reads as a read-only mapping (`section["steps"]`, `.get`, `**section`,
  `.to_dict()`), as the `ConfigDict` it was built from did.
  """

  def __getitem__(self, key: str):
    if key not in self._names():
      raise KeyError(key)
    return getattr(self, key)

  def __iter__(self):
    return iter(self._names())

  def __len__(self) -> int:
    return len(self._names())

  def _names(self) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(self))

  def to_dict(self) -> dict:
    """Plain nested dicts, as `ConfigDict.to_dict()` gives (config.json)."""
    return {k: (v.to_dict() if isinstance(v, Section) else
                dict(v) if isinstance(v, collections.abc.Mapping) else v)
            for k, v in self.items()}


def option(default, rule: Rule | None = None, help: str = "") -> Any:  # pylint: disable=redefined-builtin
  """One config option: `default` (a value, or a `Section` instance for a
  nested section), `rule` (what it may hold; None: the rule of the field's
  annotated type, see `rule_for_type`) and `help` (what it means)."""
  metadata = {"rule": rule, "help": help}
  if isinstance(default, (Section, dict, list)):
    make = (lambda: default) if isinstance(default, Section) else (
        lambda: type(default)(default))
    return dataclasses.field(default_factory=make, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def rule_for_type(hint) -> Rule:
  """The rule of an annotation: bool, int, float, str, a Mapping, or
  Optional[one of them]."""
  args = typing.get_args(hint)
  if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
    inner = [a for a in args if a is not type(None)]
    if len(inner) == 1:
      return optional(rule_for_type(inner[0]))
  simple = {bool: boolean, int: integer, float: number, str: string, dict: mapping_of}
  base = typing.get_origin(hint) or hint
  if base in simple:
    return simple[base]()
  if isinstance(base, type) and issubclass(base, collections.abc.Mapping):
    return mapping_of()
  raise TypeError(f"no default rule for type {hint!r}; give option(..., rule=...)")


def _hints(cls) -> dict:
  try:
    return typing.get_type_hints(cls)
  except (NameError, TypeError):  # a config file loaded from a path, string annotations
    return {f.name: f.type for f in dataclasses.fields(cls)}


def _default(field: dataclasses.Field):
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return field.default


def _rule(cls, field: dataclasses.Field) -> Rule:
  return field.metadata.get("rule") or rule_for_type(_hints(cls)[field.name])


def _placeholder_type(hint):
  inner = [a for a in typing.get_args(hint) if a is not type(None)]
  return inner[0] if len(inner) == 1 and isinstance(inner[0], type) else object


def config_dict(section: Section) -> ml_collections.ConfigDict:
  """The `ConfigDict` of `section`'s values (a None of an Optional[T] option
  becomes `placeholder(T)`, so `--config.x=...` can set it to a T)."""
  out, hints = {}, _hints(type(section))
  for f in dataclasses.fields(section):
    value = getattr(section, f.name)
    if isinstance(value, Section):
      out[f.name] = config_dict(value)
    elif value is None:
      out[f.name] = config_dict_lib.placeholder(_placeholder_type(hints[f.name]))
    else:
      out[f.name] = dict(value) if isinstance(value, collections.abc.Mapping) else value
  return ml_collections.ConfigDict(out)


def options_of(cls, prefix: str = "") -> dict[str, tuple[Any, Rule, str]]:
  """`{"dotted.key": (default, rule, help)}` of every leaf option of `cls`."""
  out = {}
  for f in dataclasses.fields(cls):
    default = _default(f)
    if isinstance(default, Section):
      out.update(options_of(type(default), f"{prefix}{f.name}."))
    else:
      out[prefix + f.name] = (default, _rule(cls, f), f.metadata.get("help", ""))
  return out


def rules_of(cls, prefix: str = "") -> dict[str, Rule]:
  """`{"dotted.key": rule}` of every leaf option of `cls` (what a config's
  `SCHEMA` dict used to spell out)."""
  return {k: rule for k, (_, rule, _) in options_of(cls, prefix).items()}


def _build(cls, node, prefix: str, errors: list[str]):
  """`cls` from the mapping `node` (a ConfigDict level), appending to
  `errors` every value that breaks its rule and every missing or unknown key."""
  names = [f.name for f in dataclasses.fields(cls)]
  for key in (node.keys() if hasattr(node, "keys") else ()):
    if key not in names:
      near = difflib.get_close_matches(key, names, n=1)
      errors.append(f"config.{prefix}{key} is not an option"
                    + (f"; did you mean config.{prefix}{near[0]}?" if near else
                       f" (the options here: {', '.join(names)})"))
  values = {}
  for f in dataclasses.fields(cls):
    key, default = prefix + f.name, _default(f)
    try:
      value = node[f.name]
    except (KeyError, AttributeError, TypeError):
      errors.append(f"config.{key} is missing")
      continue
    if isinstance(default, Section):
      if not hasattr(value, "keys"):
        errors.append(f"config.{key}={value!r}: must be a section of options"
                      f" ({', '.join(default)})")
        continue
      values[f.name] = _build(type(default), value, key + ".", errors)
      continue
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    elif isinstance(value, list):
      value = tuple(value)
    expect = _rule(cls, f)(value)
    if expect is not None:
      errors.append(f"config.{key}={value!r}: must be {expect}")
    values[f.name] = value
  return cls(**values)


def _lookup(config, key: str):
  value = config
  for part in key.split("."):
    value = value[part]
  return value


_MODULES: dict = {}


def _config_module(config_file: str):
  """The config file's module, loaded once per version of the file (so its
  dataclasses are the same classes on every call)."""
  path = os.path.abspath(config_file.partition(":")[0])
  key = (path, os.stat(path).st_mtime_ns)
  if key not in _MODULES:
    spec = importlib.util.spec_from_file_location("_alignax_config_schema", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _MODULES[key] = module
  return _MODULES[key]


def _schema_of(config_file: str):
  """(`{"dotted.key": rule}`, CHECKS) of a config file (the old SCHEMA view)."""
  module = _config_module(config_file)
  return rules_of(module.Config), getattr(module, "CHECKS", ())


def validate_config(config, config_file: str):
  """Checks `config` (a `ConfigDict`, a mapping or an already typed tree)
  against the options declared in `config_file` (its `Config` dataclass) and
  its `CHECKS`; returns the frozen typed tree (`Config`).

  Called once, first thing by each binary's `run` (`launch.start_run`), so a
  bad value fails in a second, not after minutes of work or inside a JAX trace.

  Raises:
    ConfigError: listing every key that is missing, unknown or out of range,
      with its value and what it must be, or the cross-key checks' messages.
  """
  module = _config_module(config_file)
  errors: list[str] = []
  typed = _build(module.Config, config, "", errors)
  if not errors:  # cross-key checks assume each key is valid on its own
    errors += [m for m in (check(typed) for check in getattr(module, "CHECKS", ())) if m]
  if errors:
    raise ConfigError("Invalid config (" + os.path.basename(config_file.partition(":")[0])
                      + "):\n  " + "\n  ".join(errors))
  return typed


def default_of(config: Section, key: str):
  """The declared default of option `key` in `config`'s tree."""
  return _lookup(type(config)(), key)


def not_applicable(config: Section, key: str, applies: bool, algorithm: str) -> str | None:
  """A CHECKS helper: the error for option `key` when it does not apply
  (`applies` is False) to `algorithm` (e.g. "config.loss.advantage='rloo'")
  but holds a value other than its declared default, so it is never silently
  dropped. A default that does not apply stays silent."""
  value, default = _lookup(config, key), default_of(config, key)
  if applies or value == default:
    return None
  return (f"config.{key}={value!r} does not apply to {algorithm}; leave it at its"
          f" default ({default!r}) or choose what it applies to")
