"""Session data: synthetic generator, helpers, tfds builders on generated files.

The builders run on small files written here in the real formats (ML-1M
`ratings.dat` inside `ml-1m.zip`, Amazon ratings CSV and 5-core JSON lines) and
passed through `manual_dir`, so no network is touched.
"""
import gzip
import json
import os
import zipfile

import numpy as np
import pytest

from alignax.recsys.data import builders
from alignax.recsys.data import sessions


def _interactions(num_users=12, num_items=9, per_user=6, seed=0):
  """Rows (user, item, ts) where every user and item has >= 5 interactions,
  plus one rare item (id 99) and one short user (id 500) that 5-core drops."""
  rng = np.random.default_rng(seed)
  rows = []
  for u in range(1, num_users + 1):
    items = rng.choice(np.arange(1, num_items + 1), per_user, replace=False)
    times = rng.permutation(per_user) * 1000 + 10**9
    rows += [(u, int(i), int(t)) for i, t in zip(items, times)]
  rows.append((1, 99, 2 * 10**9))
  rows += [(500, 1, 10**9 + k) for k in range(2)]
  return rows


def _k_core(rows, k=5):
  """Independent re-derivation of iterative k-core filtering."""
  while True:
    users = {u: sum(r[0] == u for r in rows) for u, _, _ in rows}
    items = {i: sum(r[1] == i for r in rows) for _, i, _ in rows}
    bad_u = {u for u, c in users.items() if c < k}
    bad_i = {i for i, c in items.items() if c < k}
    if not bad_u and not bad_i:
      return rows
    rows = [r for r in rows if r[0] not in bad_u and r[1] not in bad_i]


def _expected(rows):
  """Independent re-derivation: 5-core, time order, items by sorted id."""
  rows = _k_core(rows)
  assert all(r[1] != 99 and r[0] != 500 for r in rows)
  ids = {it: k + 1 for k, it in enumerate(sorted({r[1] for r in rows}))}
  out = []
  for u in sorted({r[0] for r in rows}):
    ev = sorted((r[2], ids[r[1]]) for r in rows if r[0] == u)
    out.append([i for _, i in ev])
  return len(ids), out


def test_k_core_sessions_matches_rederivation():
  rows = _interactions()
  num_items, got = builders.k_core_sessions(rows, 5)
  n, want = _expected(rows)
  assert num_items == n
  assert [list(s) for _, s, _ in got] == want
  for _, _, t in got:
    assert np.all(np.diff(t) >= 0)


def test_movielens_1m_builder_from_zip(tmp_path):
  rows = _interactions()
  manual = tmp_path / "manual"
  manual.mkdir()
  text = "".join(f"{u}::{i}::4::{t}\n" for u, i, t in rows)
  with zipfile.ZipFile(manual / "ml-1m.zip", "w") as z:
    z.writestr("ml-1m/ratings.dat", text)
  num_items, got = builders.load_sessions(
      "movielens_1m", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
  n, want = _expected(rows)
  assert num_items == n
  assert [list(s) for s in got] == want
  assert any(f.endswith(".array_record-00000-of-00001") or "array_record" in f
             for _, _, fs in os.walk(tmp_path / "data") for f in fs)


@pytest.mark.parametrize("fmt", ["ratings", "5core"])
def test_amazon_builder(tmp_path, fmt):
  rows = [(f"U{u}", f"B00{i:05d}", t) for u, i, t in _interactions(seed=1)]
  manual = tmp_path / "manual"
  manual.mkdir()
  if fmt == "ratings":
    with open(manual / "ratings_Beauty.csv", "w") as f:
      f.writelines(f"{u},{i},5.0,{t}\n" for u, i, t in rows)
  else:
    with gzip.open(manual / "reviews_Beauty_5.json.gz", "wt") as f:
      for u, i, t in rows:
        f.write(json.dumps({"reviewerID": u, "asin": i, "overall": 5.0,
                            "reviewText": "ok", "unixReviewTime": t}) + "\n")
  num_items, got = builders.load_sessions(
      f"amazon_reviews/beauty_{fmt}", data_dir=str(tmp_path / "data"),
      manual_dir=str(manual))
  keep = _k_core(rows)
  ids = {it: k + 1 for k, it in enumerate(sorted({r[1] for r in keep}))}
  want = [[ids[i] for _, i in sorted((t, i) for uu, i, t in keep if uu == u)]
          for u in sorted({r[0] for r in keep})]
  assert num_items == len(ids)
  assert [list(s) for s in got] == want


def test_synthetic_sessions_structure():
  cfg = sessions.SyntheticConfig(num_items=60, num_clusters=6, num_train=100,
                                 num_test=20, num_patterns=2,
                                 sessions_per_pattern=5)
  a = sessions.synthetic_sessions(cfg)
  b = sessions.synthetic_sessions(cfg)
  assert all(np.array_equal(x, y) for x, y in zip(a.train, b.train))  # deterministic
  assert a.forget.shape == (10, 2)
  for s in a.train + a.test:
    assert s.min() >= 1 and s.max() <= 60 and len(s) <= cfg.max_len
  # Each pattern's sessions share (a, b) at the forget position.
  pairs = {(int(a.train[s][t - 1]), int(a.train[s][t])) for s, t in a.forget}
  assert len(pairs) == 2
  retained = sessions.delete_forgotten(a.train, a.forget)
  for (s, t) in a.forget:
    assert len(retained[s]) == len(a.train[s]) - 1
    np.testing.assert_array_equal(
        retained[s], np.delete(a.train[s], t))


def test_left_pad_and_unlearning_set():
  np.testing.assert_array_equal(
      sessions.left_pad([np.array([1, 2]), np.array([3, 4, 5, 6])], 3),
      [[0, 1, 2], [4, 5, 6]])
  train = [np.array([5, 6, 7]), np.array([8, 9])]
  u = sessions.unlearning_set(train, np.array([[0, 1], [1, 1], [0, 0]]), 3)
  np.testing.assert_array_equal(u.prefixes, [[0, 0, 5], [0, 0, 8]])
  np.testing.assert_array_equal(u.targets, [6, 9])
  np.testing.assert_array_equal(u.next_items, [7, 0])
  np.testing.assert_array_equal(u.has_next, [True, False])  # t = n is masked
  assert u.num_skipped_empty == 1                           # t = 1 is skipped
  p, t = sessions.next_item_examples([np.array([1, 2, 3])], 2)
  np.testing.assert_array_equal(p, [[0, 1], [1, 2]])
  np.testing.assert_array_equal(t, [2, 3])


def test_synthetic_same_cluster_forget_items():
  kw = dict(num_items=60, num_clusters=6, num_train=100, num_test=20, num_patterns=3,
            sessions_per_pattern=4)
  default = sessions.synthetic_sessions(sessions.SyntheticConfig(**kw))
  other = sessions.synthetic_sessions(
      sessions.SyntheticConfig(forget_item="other_cluster", **kw))
  # The default is unchanged by the option (same draws, same data).
  assert all(np.array_equal(x, y) for x, y in zip(default.train, other.train))
  cfg = sessions.SyntheticConfig(forget_item="same_cluster", **kw)
  ds = sessions.synthetic_sessions(cfg)
  # Rebuild the planted chain from the same seed: the first draws are the chain's.
  chain = sessions._Chain(cfg, np.random.default_rng(cfg.seed))
  for s, t in ds.forget:
    a, b = int(ds.train[s][t - 1]), int(ds.train[s][t])
    assert chain.cluster_of[a] == chain.cluster_of[b]
    assert b != a and b not in chain.successors[a]
  with pytest.raises(ValueError, match="forget_item"):
    sessions.synthetic_sessions(sessions.SyntheticConfig(forget_item="x", **kw))
