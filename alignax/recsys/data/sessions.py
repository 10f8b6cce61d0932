"""Session data for recommenders: a synthetic generator and shared helpers.

Sessions are int32 arrays of item ids 1..num_items (0 is padding). Models take
LEFT-padded windows of fixed length L (the most recent item last).

The synthetic generator (the built-in default, fully offline and deterministic)
plants item structure that a recommender can learn, plus "private" interactions
that unlearning must remove:
- items are split into clusters; each item has a few preferred successors in
  its cluster, and sessions are Markov walks over these successors;
- for each of `num_patterns` private patterns (a -> b, with b from another
  cluster), `sessions_per_pattern` sessions pass through a and then contain
  the inserted item b, after which the walk continues from a. Deleting b gives
  back a clean Markov session, so a model retrained without the forget data
  has no reason to predict b after a, while the original model memorises it.
  With `forget_item="same_cluster"`, b is drawn from a's own cluster (not a,
  not one of a's preferred successors): the retained sessions still support
  b after a (in-cluster moves), so a retrained model keeps b fairly high, and
  pushing b down after a conflicts with the retain data.
An unlearning request is (session index, position t) of an inserted b.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

PAD = 0


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  num_items: int = 500
  num_clusters: int = 25
  num_successors: int = 3
  p_successor: float = 0.8   # follow one of the item's preferred successors
  p_jump: float = 0.05       # jump to a uniformly random item (else: own cluster)
  num_train: int = 3000
  num_test: int = 1000
  min_len: int = 5
  max_len: int = 20
  num_patterns: int = 10
  sessions_per_pattern: int = 20
  forget_item: str = "other_cluster"  # or "same_cluster" (see the module docstring)
  seed: int = 0


@dataclasses.dataclass
class SessionDataset:
  """Sessions plus unlearning requests.

  Attributes:
    num_items: items are 1..num_items.
    train: list of [n_i] int32 training sessions (forget items included).
    test: list of held-out sessions (never contain forget items).
    forget: [U, 2] int32 rows (train session index, 0-based position of v_t).
  """
  num_items: int
  train: list
  test: list
  forget: np.ndarray


class _Chain:
  """The planted Markov structure over items."""

  def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
    self.cfg, self.rng = cfg, rng
    items = rng.permutation(np.arange(1, cfg.num_items + 1))
    self.cluster_items = np.array_split(items, cfg.num_clusters)
    self.cluster_of = np.zeros(cfg.num_items + 1, np.int32)
    for c, members in enumerate(self.cluster_items):
      self.cluster_of[members] = c
    self.successors = np.zeros((cfg.num_items + 1, cfg.num_successors), np.int32)
    for members in self.cluster_items:
      for i in members:
        others = members[members != i]
        self.successors[i] = rng.choice(others, cfg.num_successors, replace=False)
    # Decreasing preference among an item's successors.
    w = 1.0 / np.arange(1, cfg.num_successors + 1)
    self.succ_p = w / w.sum()

  def next(self, item: int) -> int:
    cfg, rng = self.cfg, self.rng
    u = rng.random()
    if u < cfg.p_successor:
      return int(rng.choice(self.successors[item], p=self.succ_p))
    if u < cfg.p_successor + cfg.p_jump:
      return int(rng.integers(1, cfg.num_items + 1))
    return int(rng.choice(self.cluster_items[self.cluster_of[item]]))

  def walk(self, start: int, length: int) -> list:
    out = [start]
    while len(out) < length:
      out.append(self.next(out[-1]))
    return out


def synthetic_sessions(cfg: SyntheticConfig = SyntheticConfig()) -> SessionDataset:
  """Generates the planted-structure dataset described in the module docstring."""
  rng = np.random.default_rng(cfg.seed)
  chain = _Chain(cfg, rng)

  def length():
    return int(rng.integers(cfg.min_len, cfg.max_len + 1))

  def fresh():
    return chain.walk(int(rng.integers(1, cfg.num_items + 1)), length())

  train = [fresh() for _ in range(cfg.num_train)]
  test = [np.asarray(fresh(), np.int32) for _ in range(cfg.num_test)]
  forget = []
  pattern_sessions = rng.choice(
      cfg.num_train, (cfg.num_patterns, cfg.sessions_per_pattern), replace=False)
  for p in range(cfg.num_patterns):
    a = int(rng.integers(1, cfg.num_items + 1))
    if cfg.forget_item == "same_cluster":
      others = np.setdiff1d(chain.cluster_items[chain.cluster_of[a]],
                            np.append(chain.successors[a], a))
    elif cfg.forget_item == "other_cluster":
      others = np.setdiff1d(np.arange(1, cfg.num_items + 1),
                            chain.cluster_items[chain.cluster_of[a]])
    else:
      raise ValueError(f"forget_item={cfg.forget_item!r}: use other_cluster or "
                       "same_cluster")
    b = int(rng.choice(others))
    for s in pattern_sessions[p]:
      n = length() - 1  # the inserted item brings it back to <= max_len
      # Position of a (b goes right after it), keeping the session's own start.
      j = int(rng.integers(0, min(n, len(train[s]))))
      prefix = train[s][:j]
      session = prefix + chain.walk(a, n - j)
      train[s] = session[: j + 1] + [b] + session[j + 1:]
      forget.append((s, j + 1))
  train = [np.asarray(s, np.int32) for s in train]
  return SessionDataset(cfg.num_items, train, test,
                        np.asarray(forget, np.int32).reshape(-1, 2))


def left_pad(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
  """Keeps the last `length` items of each sequence, left-padded: [N, length]."""
  out = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    s = np.asarray(s)[-length:]
    if len(s):
      out[i, length - len(s):] = s
  return out


def delete_forgotten(train: Sequence[np.ndarray], forget: np.ndarray) -> list:
  """Training sessions with every requested (session, position) item removed."""
  drop: dict[int, set] = {}
  for s, t in forget:
    drop.setdefault(int(s), set()).add(int(t))
  return [np.delete(seq, sorted(drop[i])) if i in drop else seq
          for i, seq in enumerate(train)]


def next_item_examples(sessions: Sequence[np.ndarray], length: int,
                       min_prefix: int = 1):
  """Every (prefix, next item) pair of `sessions`: ([N, length], [N])."""
  prefixes, targets = [], []
  for s in sessions:
    for t in range(min_prefix, len(s)):
      prefixes.append(s[:t])
      targets.append(s[t])
  return left_pad(prefixes, length), np.asarray(targets, np.int32)


@dataclasses.dataclass
class UnlearningSet:
  """Arrays describing U unlearning samples (docs/algorithms.md §9.1).

  Attributes:
    prefixes: [U, L] left-padded v_{1:t-1}.
    targets: [U] v_t, the item to forget.
    next_items: [U] v_{t+1} (0 where t = n).
    has_next: [U] bool, False where t = n (masked out of L_normal).
    num_skipped_empty: requests with t = 1 (empty prefix), skipped.
  """
  prefixes: np.ndarray
  targets: np.ndarray
  next_items: np.ndarray
  has_next: np.ndarray
  num_skipped_empty: int


def unlearning_set(train: Sequence[np.ndarray], forget: np.ndarray,
                   length: int) -> UnlearningSet:
  """Builds the unlearning arrays; requests with an empty prefix are skipped."""
  prefixes, targets, nexts, has_next, skipped = [], [], [], [], 0
  for s, t in forget:
    seq = train[int(s)]
    if t == 0:
      skipped += 1
      continue
    prefixes.append(seq[:t])
    targets.append(seq[t])
    has_next.append(t + 1 < len(seq))
    nexts.append(seq[t + 1] if t + 1 < len(seq) else PAD)
  return UnlearningSet(left_pad(prefixes, length),
                       np.asarray(targets, np.int32),
                       np.asarray(nexts, np.int32),
                       np.asarray(has_next, bool), skipped)


def draw_forget_requests(train: Sequence[np.ndarray], num: int,
                         seed: int = 0) -> np.ndarray:
  """Random requests for real data sets: [num, 2] (session, position >= 1)."""
  rng = np.random.default_rng(seed)
  eligible = [i for i, s in enumerate(train) if len(s) >= 2]
  sessions = rng.choice(eligible, min(num, len(eligible)), replace=False)
  return np.asarray([(s, rng.integers(1, len(train[s]))) for s in sessions],
                    np.int32).reshape(-1, 2)
