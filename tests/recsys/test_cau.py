"""alignax.recsys.cau's loss vector against an independent NumPy derivation."""
import numpy as np
import pytest
from flax import nnx

from alignax.experiments import cau_unlearn
from alignax.recsys import cau
from alignax.recsys import recommenders
from alignax.recsys.data import sessions

NUM_ITEMS, L = 12, 5


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(logits, orig, drop):
  """mean_b KL(P0 || P) over the items not in drop[b] (both renormalised)."""
  out = []
  for z, z0, d in zip(logits, orig, drop):
    keep = ~d
    logp, logp0 = _np_log_softmax(z[keep]), _np_log_softmax(z0[keep])
    out.append(np.sum(np.exp(logp0) * (logp0 - logp)))
  return np.mean(out)


def _setup():
  model = recommenders.make_recommender("gru4rec", NUM_ITEMS, seed=0, hidden=8)
  graphdef, params = nnx.split(model)
  rng = np.random.default_rng(0)
  train = [rng.integers(1, NUM_ITEMS + 1, n).astype(np.int32) for n in (4, 5, 3, 6)]
  u = sessions.unlearning_set(train, np.array([[0, 2], [1, 1], [2, 2], [3, 4]]), L)
  orig_logits = rng.normal(size=(len(u.targets), NUM_ITEMS + 1)).astype(np.float32)
  return graphdef, params, u, orig_logits


@pytest.mark.parametrize("exclude_target", [False, True])
@pytest.mark.parametrize("forget_set", [False, True])
def test_kl_term_drops_the_forget_set(exclude_target, forget_set):
  graphdef, params, u, orig_logits = _setup()
  kl_drop = (cau_unlearn.forget_set_items(u, NUM_ITEMS + 1) if forget_set else None)
  idx = np.array([0, 1, 2, 3, -1])  # one padding row
  batch = cau_unlearn.unlearn_batch(u, orig_logits, idx, kl_drop=kl_drop)
  assert ("kl_drop" in batch) == forget_set
  losses = np.asarray(cau.loss_vector(graphdef, params, batch,
                                      kl_exclude_target=exclude_target))
  logits = np.asarray(recommenders.logits_fn(graphdef)(params, u.prefixes),
                      np.float64)
  rows = np.arange(len(u.targets))
  drop = np.zeros((len(rows), NUM_ITEMS + 1), bool)
  if exclude_target:
    drop[rows, u.targets] = True
  if forget_set:
    drop[:, np.unique(u.targets)] = True
  logp = _np_log_softmax(logits)
  np.testing.assert_allclose(losses[0], logp[rows, u.targets].mean(), rtol=1e-5)
  has = u.has_next
  np.testing.assert_allclose(losses[1], -logp[rows, u.next_items][has].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(losses[2], _np_kl(logits, orig_logits.astype(np.float64),
                                               drop), rtol=1e-4, atol=1e-6)


def test_forget_set_items():
  _, _, u, _ = _setup()
  items = cau_unlearn.forget_set_items(u, NUM_ITEMS + 1)
  assert items.shape == (NUM_ITEMS + 1,) and items.dtype == bool
  np.testing.assert_array_equal(np.flatnonzero(items), np.unique(u.targets))
