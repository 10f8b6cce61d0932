"""The objectives' registries: policy losses, aggregations, advantage
estimators and DPO losses by name, so configs choose by string, not if-chains.

The idea follows google/tunix `rl/function_registry.py`: each module registers
its functions under a name with a decorator, and a config's
`loss_type="dapo"` or `advantage_estimator="rloo"` is a dictionary look-up.
The table type is `alignax.registry.Registry`, shared by every name table of
the package; the EM weightings and curricula keep theirs beside their
functions (`em.EM_WEIGHTINGS`, `curriculum.CURRICULA`).

Registries:
  POLICY_LOSSES: name -> `PolicyLossDef` (per-token loss fn + aggregation name).
  AGGREGATIONS: name -> fn(per_token, mask, *, max_len) -> (numerator, normaliser).
  ADVANTAGE_ESTIMATORS: name -> fn(rewards [N], group_size, **params) -> [N].
  DPO_LOSSES: name -> fn(delta, chosen_logratios, rejected_logratios, beta,
    label_smoothing) -> per-pair loss.
"""
import inspect
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

from alignax.registry import Registry, UnknownNameError  # noqa: F401  (re-exported)


class PolicyLossDef(NamedTuple):
  """A registered policy loss.

  Attributes:
    per_token: `fn(inputs: PolicyLossInputs) -> [N, T] or [N, 1]` per-token loss.
    aggregation: key of `AGGREGATIONS` that reduces it to numerator/normaliser.
    uses_global_token_count: True where TRL divides by `num_items_in_batch`
      (dapo, cispo, vespo), so a caller-supplied global count replaces the local
      token count.
    clip_metrics: which clip-fraction metrics TRL logs ("ppo", "cispo", None).
    reads: the loss-specific `PolicyLossConfig` options its per-token loss reads
      (e.g. ("epsilon_low", "epsilon_high", "delta") for the clipped losses), so
      a config can refuse the others when set; None: not declared (any).
  """
  per_token: Callable
  aggregation: str
  uses_global_token_count: bool = False
  clip_metrics: str = "ppo"
  reads: Optional[Tuple[str, ...]] = None


POLICY_LOSSES = Registry("policy loss")
AGGREGATIONS = Registry("aggregation")
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
DPO_LOSSES = Registry("DPO loss")


def register_aggregation(*names: str):
  """Decorator: registers an aggregation under one or more names."""
  return AGGREGATIONS.register(*names)


def register_policy_loss(name: str, aggregation: str, *,
                         uses_global_token_count: bool = False,
                         clip_metrics: str = "ppo",
                         reads: Optional[Tuple[str, ...]] = None):
  """Decorator: registers a per-token policy loss with its aggregation (and
  the loss-specific options it reads, see `PolicyLossDef.reads`)."""
  def wrap(fn):
    POLICY_LOSSES.add(name, PolicyLossDef(fn, aggregation, uses_global_token_count,
                                          clip_metrics, reads))
    return fn
  return wrap


def register_advantage_estimator(*names: str):
  """Decorator: registers an advantage estimator under one or more names."""
  return ADVANTAGE_ESTIMATORS.register(*names)


def register_dpo_loss(name: str):
  """Decorator: registers a DPO loss under `name`."""
  return DPO_LOSSES.register(name)


def get_policy_loss(name: str) -> PolicyLossDef:
  return POLICY_LOSSES[name]


def get_aggregation(name: str) -> Callable:
  return AGGREGATIONS[name]


def get_advantage_fn(name: str) -> Callable:
  return ADVANTAGE_ESTIMATORS[name]


def get_dpo_loss(name: str) -> Callable:
  return DPO_LOSSES[name]


def accepted_options(fn: Callable, options: Mapping[str, Any]) -> Dict[str, Any]:
  """The entries of `options` that `fn` takes as keyword arguments.

  A config holds the options of several registered functions at once (e.g.
  `scale_rewards` is an option of "grpo" and "f_grpo", not of "rloo"); each
  function is called with its own: `fn(x, **accepted_options(fn, options))`.
  """
  params = inspect.signature(fn).parameters
  return {k: v for k, v in options.items()
          if k in params and params[k].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD)}
