"""Name -> function registries, so configs choose by string, not if-chains.

The idea follows google/tunix `rl/function_registry.py`: each module registers
its functions under a name with a decorator, and a config's
`loss_type="dapo"` or `advantage_estimator="rloo"` is a dictionary look-up.

Registries:
  POLICY_LOSSES: name -> `PolicyLossDef` (per-token loss fn + aggregation name).
  AGGREGATIONS: name -> fn(per_token, mask, *, max_len) -> (numerator, normaliser).
  ADVANTAGE_ESTIMATORS: name -> advantage function.
  DPO_LOSSES: name -> fn(delta, chosen_logratios, rejected_logratios, beta,
    label_smoothing) -> per-pair loss.
"""
from typing import Callable, Dict, NamedTuple


class PolicyLossDef(NamedTuple):
  """A registered policy loss.

  Attributes:
    per_token: `fn(inputs: PolicyLossInputs) -> [N, T] or [N, 1]` per-token loss.
    aggregation: key of `AGGREGATIONS` that reduces it to numerator/normaliser.
    uses_global_token_count: True where TRL divides by `num_items_in_batch`
      (dapo, cispo, vespo), so a caller-supplied global count replaces the local
      token count.
    clip_metrics: which clip-fraction metrics TRL logs ("ppo", "cispo", None).
  """
  per_token: Callable
  aggregation: str
  uses_global_token_count: bool = False
  clip_metrics: str = "ppo"


POLICY_LOSSES: Dict[str, PolicyLossDef] = {}
AGGREGATIONS: Dict[str, Callable] = {}
ADVANTAGE_ESTIMATORS: Dict[str, Callable] = {}
DPO_LOSSES: Dict[str, Callable] = {}


def _register(table: Dict, name: str, value, kind: str):
  if name in table:
    raise ValueError(f"{kind} {name!r} is already registered")
  table[name] = value


def register_aggregation(*names: str):
  """Decorator: registers an aggregation under one or more names."""
  def wrap(fn):
    for name in names:
      _register(AGGREGATIONS, name, fn, "aggregation")
    return fn
  return wrap


def register_policy_loss(name: str, aggregation: str, *,
                         uses_global_token_count: bool = False,
                         clip_metrics: str = "ppo"):
  """Decorator: registers a per-token policy loss with its aggregation."""
  def wrap(fn):
    _register(POLICY_LOSSES, name,
              PolicyLossDef(fn, aggregation, uses_global_token_count,
                            clip_metrics), "policy loss")
    return fn
  return wrap


def register_advantage_estimator(*names: str):
  """Decorator: registers an advantage estimator under one or more names."""
  def wrap(fn):
    for name in names:
      _register(ADVANTAGE_ESTIMATORS, name, fn, "advantage estimator")
    return fn
  return wrap


def register_dpo_loss(name: str):
  def wrap(fn):
    _register(DPO_LOSSES, name, fn, "DPO loss")
    return fn
  return wrap


def _lookup(table: Dict, name: str, kind: str):
  try:
    return table[name]
  except KeyError:
    raise ValueError(
        f"unknown {kind} {name!r}; registered: {sorted(table)}") from None


def get_policy_loss(name: str) -> PolicyLossDef:
  return _lookup(POLICY_LOSSES, name, "policy loss")


def get_aggregation(name: str) -> Callable:
  return _lookup(AGGREGATIONS, name, "aggregation")


def get_advantage_fn(name: str) -> Callable:
  return _lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")


def get_dpo_loss(name: str) -> Callable:
  return _lookup(DPO_LOSSES, name, "DPO loss")
