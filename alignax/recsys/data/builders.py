"""tensorflow-datasets builders for session-recommendation data (no TensorFlow).

Builders write `array_record` files and are read back with `as_data_source()`,
which needs neither TensorFlow nor tf.data (checked in this environment: tfds
4.9.10 prepares and reads array_record data sets with TensorFlow absent).

- `MovieLens1M`: `ml-1m.zip` / `ratings.dat` (`UserID::MovieID::Rating::Timestamp`).
- `AmazonReviews`: the 2014 Amazon review data (McAuley et al.), categories
  Beauty and Video Games, either the ratings-only CSV (`user,item,rating,time`,
  no header) or the 5-core JSON lines (`reviewerID`, `asin`, `unixReviewTime`).

Each example is one user's chronologically sorted session after iterative
k-core filtering (users and items with >= `min_count` interactions, the usual
5-core setting), with items re-indexed to 1..num_items (0 = padding):
  {"user": int64, "items": int32 [n], "timestamps": float64 [n]}.
Fractional timestamps are kept as they are (never cut to ints, which would
reorder events within a second). A malformed line raises `DataFormatError`
naming the file and line.
`num_items` is stored in `info.metadata`.

TensorFlow-free caveats: tfds' own archive extractor imports TensorFlow, so the
ML-1M zip is read with `zipfile`; the builders point `code_path` at this file
(tfds' module lookup needs the `importlib_resources` backport otherwise).

Files are looked up in `manual_dir` first (tests generate them there in the real
formats, so no network is touched); otherwise the real URL is downloaded.
"""
from __future__ import annotations

import collections
import gzip
import json
import os
import zipfile
from typing import Iterable, Iterator

import numpy as np

try:
  from etils import epath
  import tensorflow_datasets as tfds
except ImportError as e:  # only the public data sets need tfds
  raise ImportError(
      "alignax.recsys.data.builders (MovieLens-1M, Amazon reviews) needs "
      "tensorflow-datasets, array-record and etils, which a plain install "
      f"does not pull ({e}). Install them with: pip install 'alignax[recsys]'"
  ) from e

_ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
_AMAZON_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
_AMAZON_FILES = {  # category -> (ratings-only CSV, 5-core JSON)
    "beauty": ("ratings_Beauty.csv", "reviews_Beauty_5.json.gz"),
    "games": ("ratings_Video_Games.csv", "reviews_Video_Games_5.json.gz"),
}


class DataFormatError(ValueError):
  """A data file is malformed; the message names the file and line."""


def _timestamp(text, path: str, line: int):
  """An int, or a float when fractional (never truncated: order matters)."""
  try:
    value = float(text)
  except (TypeError, ValueError):
    raise DataFormatError(f"{path}, line {line}: timestamp {text!r} is not a"
                          " number.") from None
  if not np.isfinite(value):
    raise DataFormatError(f"{path}, line {line}: timestamp {text!r} is not finite.")
  return int(value) if value.is_integer() else value


def _fields(line: str, sep: str, count: int, names: str, path: str, line_no: int):
  parts = line.strip().split(sep)
  if len(parts) != count:
    raise DataFormatError(f"{path}, line {line_no}: expected {count} {sep!r}-separated"
                          f" fields ({names}), got {len(parts)}: {line.strip()[:80]!r}.")
  return parts


def k_core_sessions(rows: Iterable[tuple], min_count: int = 5):
  """(user, item, timestamp) rows -> (num_items, [(user_idx, items, times)]).

  Iteratively drops users and items with fewer than `min_count` interactions
  until both constraints hold, sorts each user's interactions by time (stable,
  so ties keep file order), and maps items to 1..num_items in sorted id order.
  """
  rows = list(rows)
  while True:
    users = collections.Counter(r[0] for r in rows)
    items = collections.Counter(r[1] for r in rows)
    kept = [r for r in rows
            if users[r[0]] >= min_count and items[r[1]] >= min_count]
    if len(kept) == len(rows):
      break
    rows = kept
  item_ids = {it: i + 1 for i, it in enumerate(sorted({r[1] for r in rows}))}
  by_user = collections.defaultdict(list)
  for u, it, ts in rows:
    by_user[u].append((ts, item_ids[it]))
  out = []
  for idx, u in enumerate(sorted(by_user)):
    events = sorted(by_user[u], key=lambda e: e[0])
    out.append((idx, np.asarray([e[1] for e in events], np.int32),
                np.asarray([e[0] for e in events], np.float64)))
  return len(item_ids), out


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "user": np.int64,
      "items": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      # float64: Amazon files may carry fractional times (exact below 2**53).
      "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.float64),
  })


def _manual_file(dl_manager, *names) -> str | None:
  """The first of `names` present in the manual folder, if one was given."""
  try:
    folder = dl_manager.manual_dir
  except (AssertionError, ValueError, FileNotFoundError):
    return None  # no manual_dir configured: download instead
  for name in names:
    path = os.path.join(os.fspath(folder), name)
    if os.path.exists(path):
      return path
  return None


class _SessionBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared: rows -> k-core sessions -> one 'train' split + num_items."""

  MIN_COUNT = 5
  # Optional: without a manual_dir the builders download the files.
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional. Place the original files (e.g. ml-1m.zip or ratings.dat; "
      "ratings_Beauty.csv or reviews_Beauty_5.json.gz) in manual_dir to skip "
      "the download.")

  # tfds derives this from the module via importlib resources, which for an
  # editable install needs the `importlib_resources` backport (absent here);
  # naming the file directly also puts a `checksums.tsv` beside it in reach.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_features(),
                                 metadata=tfds.core.MetadataDict())

  def _rows(self, dl_manager) -> Iterator[tuple]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    num_items, sessions = k_core_sessions(self._rows(dl_manager),
                                          self.MIN_COUNT)
    if not sessions:
      raise DataFormatError(
          f"{self.name}: no user is left after {self.MIN_COUNT}-core filtering (each"
          f" user and item needs >= {self.MIN_COUNT} interactions); is the file complete?")
    self.info.metadata["num_items"] = num_items
    return {"train": self._generate_examples(sessions)}

  def _generate_examples(self, sessions):
    for user, items, times in sessions:
      yield int(user), {"user": user, "items": items, "timestamps": times}


class MovieLens1M(_SessionBuilder):
  """MovieLens-1M ratings as chronological user sessions."""

  name = "alignax_movielens_1m"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "float64 timestamps (fractional times kept)."}

  def _rows(self, dl_manager):
    path = _manual_file(dl_manager, "ratings.dat", "ml-1m/ratings.dat")
    archive = None
    if path is not None:
      with open(path, "rb") as f:
        data = f.read()
    else:
      archive = (_manual_file(dl_manager, "ml-1m.zip")
                 or os.fspath(dl_manager.download(_ML1M_URL)))
      # zipfile, not dl_manager.extract: tfds' extractor imports TensorFlow.
      with zipfile.ZipFile(archive) as z:
        data = z.read("ml-1m/ratings.dat")
    # ratings.dat is latin-1 like the rest of ML-1M; fields are '::'-separated.
    source = path or f"{archive}:ml-1m/ratings.dat"
    for line_no, line in enumerate(data.decode("latin-1").splitlines(), 1):
      if line.strip():
        user, movie, _, ts = _fields(line, "::", 4, "UserID::MovieID::Rating::Timestamp",
                                     source, line_no)
        if not (user.isdigit() and movie.isdigit()):
          raise DataFormatError(f"{source}, line {line_no}: UserID and MovieID must be"
                                f" integers, got {user!r}, {movie!r}.")
        yield int(user), int(movie), _timestamp(ts, source, line_no)


class AmazonReviewsConfig(tfds.core.BuilderConfig):
  """category in _AMAZON_FILES; fmt "ratings" (CSV) or "5core" (JSON lines)."""

  def __init__(self, *, category: str, fmt: str, **kwargs):
    super().__init__(name=f"{category}_{fmt}", **kwargs)
    self.category, self.fmt = category, fmt


def _read_ratings_csv(path):
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if line.strip():
        user, item, _, ts = _fields(line, ",", 4, "user,item,rating,time", path, line_no)
        yield user, item, _timestamp(ts, path, line_no)


def _read_5core_json(path):
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if line.strip():
        try:
          r = json.loads(line)
        except ValueError as e:
          raise DataFormatError(f"{path}, line {line_no}: not valid JSON ({e}).") from None
        for field in ("reviewerID", "asin", "unixReviewTime"):
          if not isinstance(r, dict) or r.get(field) is None:
            raise DataFormatError(f"{path}, line {line_no}: missing field {field!r}.")
        yield r["reviewerID"], r["asin"], _timestamp(r["unixReviewTime"], path, line_no)


_AMAZON_READERS = {"ratings": (0, _read_ratings_csv),
                   "5core": (1, _read_5core_json)}


class AmazonReviews(_SessionBuilder):
  """Amazon 2014 reviews (Beauty, Video Games) as chronological sessions."""

  name = "alignax_amazon_reviews"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "float64 timestamps (fractional times kept)."}
  BUILDER_CONFIGS = [
      AmazonReviewsConfig(category=c, fmt=f, version="1.1.0")
      for c in _AMAZON_FILES for f in _AMAZON_READERS
  ]

  def _rows(self, dl_manager):
    which, reader = _AMAZON_READERS[self.builder_config.fmt]
    filename = _AMAZON_FILES[self.builder_config.category][which]
    path = _manual_file(dl_manager, filename)
    if path is None:
      path = os.fspath(dl_manager.download(_AMAZON_URL + filename))
    return reader(path)


BUILDERS = {"movielens_1m": MovieLens1M, "amazon_reviews": AmazonReviews}


def dataset_names() -> list[str]:
  """Every name `make_builder` accepts."""
  return ["movielens_1m"] + [f"amazon_reviews/{c.name}" for c in AmazonReviews.BUILDER_CONFIGS]


def make_builder(name: str, *, data_dir: str | None = None):
  """'movielens_1m' or 'amazon_reviews/<category>_<fmt>' -> builder."""
  if name not in dataset_names():
    raise ValueError(f"Unknown session data set {name!r}; choose one of {dataset_names()}.")
  base, _, config = name.partition("/")
  kwargs = {"config": config} if config else {}
  return BUILDERS[base](data_dir=data_dir, file_format="array_record", **kwargs)


def load_sessions(name: str, *, data_dir: str | None = None,
                  manual_dir: str | None = None) -> tuple[int, list]:
  """Prepares (once) and reads a data set: (num_items, sessions by user)."""
  builder = make_builder(name, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  source = builder.as_data_source()["train"]
  examples = sorted((source[i] for i in range(len(source))),
                    key=lambda e: int(e["user"]))
  return (int(builder.info.metadata["num_items"]),
          [np.asarray(e["items"], np.int32) for e in examples])
