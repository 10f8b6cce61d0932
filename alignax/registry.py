"""`Registry`: the one name -> value table type of alignax.

Configs choose functions, data sets, tools and critics by string; each such
table is a `Registry` (the objectives' losses and estimators,
`alignax.objectives.registries`; the agents' data sets, tasks, tools, critics
and reward functions; the decoder's attention implementations). Importable
alone: no jax, no alignax import.
"""
from typing import Any, Callable, Dict, Iterator, Mapping


class UnknownNameError(KeyError, ValueError):
  """An unknown registry name (a `KeyError` and a `ValueError`, for callers of both)."""

  def __str__(self) -> str:  # KeyError would repr() the message.
    return str(self.args[0])


class Registry(Mapping):
  """A name -> value table that configs choose from by string.

  Registering a name twice raises (two modules must not silently fight over a
  name); looking up an unknown name raises a `KeyError` that lists the
  registered names, so a typo in a config says what to type instead. It is a
  read-only `Mapping` otherwise (`name in registry`, `sorted(registry)`).
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._table: Dict[str, Any] = {}

  def add(self, name: str, value: Any) -> Any:
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
    if name in self._table:
      raise ValueError(f"{self.kind} {name!r} is already registered")
    self._table[name] = value
    return value

  def register(self, *names: str) -> Callable:
    """Decorator: registers the decorated object under each of `names`."""
    def wrap(value):
      for name in names:
        self.add(name, value)
      return value
    return wrap

  def __getitem__(self, name: str) -> Any:
    try:
      return self._table[name]
    except (KeyError, TypeError):
      raise UnknownNameError(
          f"unknown {self.kind} {name!r}; registered: {sorted(self._table)}"
      ) from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._table)

  def __len__(self) -> int:
    return len(self._table)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {sorted(self._table)})"
