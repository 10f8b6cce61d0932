"""DRO's selector and generator (docs/algorithms.md §7): prompt format, training
rows, batched sampling of selections and answers, held-out evaluation.

One tokenizer serves both roles (plus one token per candidate id `[i]`); the
roles are played by one decoder or two (`graphdef` is shared, `states` maps a
state name to its `TrainState`, `roles` maps "selector"/"generator" to a name).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.agents.rollouts import multi_turn as rollout_lib
from alignax.agents.scoring import answer_metrics as metrics_lib
from alignax.agents.worlds import qa_world
from alignax.framework import sampling, vocab

ROLES = ("selector", "generator")


def parse_selections(texts, num_candidates: int, top_k: int):
  """Selector outputs -> (permutations [N] of candidate positions, valid [N]).

  `parse_ranking` drops out-of-range ids and repeats and appends the unseen
  candidates in BM25 order (§7.1); an output is valid when it names exactly
  `top_k` distinct in-range ids.
  """
  perms = [metrics_lib.parse_ranking(t, num_candidates) for t in texts]
  valid = np.asarray([len(metrics_lib.parse_ranking(t, num_candidates, complete=False))
                      == top_k for t in texts])
  return perms, valid


# ------------------------------------------------------------- prompts, rows
class DroPrompts:
  """DRO's token formats: the selector and generator prompts and training rows.

  Holds the tokenizer, the world, each question's candidate passages (the
  selector's order) and BM25's own ranking (`bm25`, what `bm25_top5` reads:
  inserted gold passages change the candidates, never it).
    selector : <s> rank question : <q> [1] <passage> ... [n] <passage> <END_SEARCH>
                                                        -> [a] > [b] > ... </s>
    generator: <s> answer question : <q> <DOC> <passage> ... <END_SEARCH> <FINAL>
                                                        -> <answer> </s>
  """

  def __init__(self, tokenizer, world, candidates: dict, *, num_candidates: int, top_k: int,
               max_answer_tokens: int, no_repeat_ids: bool, bm25: dict | None = None):
    self.tokenizer = tokenizer
    self.world = world
    self.corpus = world.dataset.corpus
    self.candidates = candidates  # question id -> passage indices [n]
    self.bm25 = candidates if bm25 is None else bm25  # question id -> BM25's ranking [>= top_k]
    self.num = num_candidates
    self.top_k = top_k
    self.max_answer = max_answer_tokens
    self.pad, self.bos, self.eos = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                    tokenizer.eos_token_id)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    self.encode = enc
    self._passage = {}
    self._doc = enc(qa_world.DOC)
    self._end = enc(qa_world.END_SEARCH)
    self._final = enc(qa_world.FINAL)
    self._ids = [enc(f"[{i + 1}]") for i in range(self.num)]
    # Constrained selector decoding: each candidate id's tokens at most once per
    # output (None: free sampling).
    self.no_repeat = [t for ids in self._ids for t in ids] if no_repeat_ids else None
    self._sep = enc(">")
    # Generator budget: the answer + EOS. Selector: top_k ids, separators, EOS.
    self.sel_new = 2 * self.top_k + 1
    self.gen_new = self.max_answer + 1

  def decode(self, ids) -> str:
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  def passage(self, i: int) -> list[int]:
    if i not in self._passage:
      self._passage[i] = self.encode(self.corpus[i].text)
    return self._passage[i]

  def selector_prompt(self, ex) -> list[int]:
    ids = vocab.bos_ids(self.tokenizer) + self.encode(f"rank question : {ex.question}")
    for pos, i in enumerate(self.candidates[ex.id]):
      ids += self._ids[pos] + self.passage(int(i))
    return ids + self._end

  def ranking_ids(self, positions) -> list[int]:
    """Output tokens `[a] > [b] > ... </s>` of candidate positions (0-based)."""
    out = []
    for j, p in enumerate(positions):
      out += (self._sep if j else []) + self._ids[p]
    return out + [self.eos]

  def generator_prompt(self, ex, passages) -> list[int]:
    ids = vocab.bos_ids(self.tokenizer) + self.encode(f"answer question : {ex.question}")
    for i in passages:
      ids += self._doc + self.passage(int(i))
    return ids + self._end + self._final

  def gold_ids(self, ex) -> list[int]:
    return self.encode(ex.answers[0])[:self.max_answer] + [self.eos]

  def docs(self, ex, permutation) -> list[int]:
    """Passage indices of the first top_k candidates of a permutation."""
    return [int(self.candidates[ex.id][p]) for p in permutation[:self.top_k]]

  def bm25_docs(self, ex) -> list[int]:
    """Passage indices of BM25's own top_k for the question (no inserted gold)."""
    return [int(i) for i in self.bm25[ex.id][:self.top_k]]

  def gold_positions(self, ex) -> list[int]:
    cand = list(self.candidates[ex.id])
    return [cand.index(g) for g in self.world.gold[ex.id] if g in cand]

  def oracle_ranking(self, ex) -> list[int]:
    """Gold candidate positions first (hop order), then BM25 order."""
    gold = self.gold_positions(ex)
    return (gold + [p for p in range(self.num) if p not in gold])[:self.top_k]

  # Rows: (tokens, loss mask, answer mask); the answer mask is the gold span.
  def generator_row(self, ex, passages, swap=None, train_prompt: bool = False):
    """swap: (old, new) token lists replaced everywhere in the row.
    train_prompt: the loss mask covers the prompt too (the answer mask never)."""
    prompt, gold = self.generator_prompt(ex, passages), self.gold_ids(ex)
    if swap is not None:
      prompt, gold = swap_tokens(prompt, *swap), swap_tokens(gold, *swap)
    answer = [False] * len(prompt) + [True] * len(gold)
    return prompt + gold, ([True] * len(answer) if train_prompt else answer), answer

  def counterfactual_swap(self, ex, rng):
    """(gold answer, a random other entity of its type) as token lists: with
    it, the answer can only be read from the passages, never recalled from
    other rows about the same person (the DRO binary's warm-up)."""
    pool = [a for a in self.world.answer_pool[ex.id] if a != ex.answers[0]]
    if not pool:
      raise ValueError(f"warmup.counterfactual needs a second entity of the type of"
                       f" {ex.answers[0]!r} ({ex.id}); enlarge config.world or turn it off.")
    return self.encode(ex.answers[0]), self.encode(pool[rng.randint(len(pool))])

  def selector_row(self, ex, output):
    prompt = self.selector_prompt(ex)
    mask = [False] * len(prompt) + [True] * len(output)
    return prompt + list(output), mask, mask

  def batch(self, rows, length, weights=None):
    tokens, attn, (loss, answer) = rollout_lib.pad_trajectories(
        [np.asarray(r[0]) for r in rows], [[np.asarray(r[1]) for r in rows],
                                           [np.asarray(r[2]) for r in rows]],
        length, self.pad)
    out = dict(sequences=tokens, attention_mask=attn, loss_mask=loss[:, 1:],
               answer_mask=answer[:, 1:])
    out["weights"] = (np.ones(len(rows), np.float32) if weights is None
                      else np.asarray(weights, np.float32))
    return out

  def lengths(self, examples):
    """Padded row lengths (selector, generator), multiples of 8."""
    sel = max(len(self.selector_prompt(e)) for e in examples) + self.sel_new
    longest = sorted((len(self.passage(int(i))) for e in examples
                      for i in self.candidates[e.id]), reverse=True)[:self.top_k]
    gen = (max(len(self.generator_prompt(e, [])) for e in examples) + sum(longest)
           + self.gen_new)
    return -(-sel // 8) * 8, -(-gen // 8) * 8


def swap_tokens(tokens, old, new):
  """`tokens` with every occurrence of the sub-sequence `old` replaced by `new`."""
  if not old:
    raise ValueError("swap_tokens needs a non-empty sub-sequence to replace.")
  out, i = [], 0
  while i < len(tokens):
    if tokens[i:i + len(old)] == old:
      out += new
      i += len(old)
    else:
      out.append(tokens[i])
      i += 1
  return out


# ------------------------------------------------------------ sampling
def generate_completions(graphdef, params, fmt, prompts, max_new, key, *, temperature=0.0,
                         top_p=None, repeats=1, no_repeat=None):
  """Completions (token lists, stop token included) of every prompt x repeats."""
  model = nnx.merge(graphdef, params)
  gen = sampling.generate(model, prompts, max_new_tokens=max_new, temperature=temperature,
                          top_p=top_p if temperature > 0 else None,
                          eos_token_id=fmt.eos, seed=key, num_generations=repeats,
                          pad_token_id=fmt.pad, no_repeat_token_ids=no_repeat)
  tokens, mask = np.asarray(gen.tokens), np.asarray(gen.mask)
  return [t[m].tolist() for t, m in zip(tokens, mask)]


def select(graphdef, params, fmt, examples, key, *, repeats=1, temperature=0.0,
           top_p=None):
  """Selector outputs (token lists), permutations and validity, row p*m + j."""
  outs = generate_completions(graphdef, params, fmt,
                              [fmt.selector_prompt(e) for e in examples], fmt.sel_new, key,
                              temperature=temperature, top_p=top_p, repeats=repeats,
                              no_repeat=fmt.no_repeat)
  perms, valid = parse_selections([fmt.decode(o) for o in outs], fmt.num, fmt.top_k)
  return outs, perms, valid


def selection_logprobs(graphdef, params, prompts, outputs, *, temperature: float,
                       top_p: float | None, no_repeat=None, chunk: int = 256):
  """(log p_phi(z), log q(z)), each [N]: the log-probabilities of the sampled
  selector outputs `outputs[n]` (token lists, the stop token included) after
  `prompts[n]`, under the selector itself (p_phi: temperature 1, no top-p)
  and under the proposal they were sampled from (q: `select`'s temperature
  and top_p), both with `select`'s constrained decoding (`no_repeat`: each of
  these ids masked once written). The DRO importance ratio p_phi / q of
  `objectives.dro_weights` (docs/algorithms.md §7.1).

  Per step t of an output z: `log q_t = s[z_t] - logsumexp_{v in V_p} s[v]`
  with `s = logits / temperature` and `V_p` the nucleus: the fewest top
  tokens of softmax(s) whose mass reaches top_p (`sampling.filter_logits`);
  the sampled token always counts as in it (a re-computed logit can differ
  from the sampler's by rounding). `log p_t = log_softmax(logits)[z_t]`.
  `log q(z) = sum_t log q_t`, likewise p. With temperature 1 and top_p 1 (or
  None) both are equal. Rows are scored `chunk` at a time (the last chunk
  padded with repeats), each trimmed to its longest row.
  """
  n = len(prompts)
  if len(outputs) != n:
    raise ValueError(f"{len(outputs)} outputs for {n} prompts.")
  steps = max(max((len(o) for o in outputs), default=1), 1)
  ids = tuple(sorted(set(int(t) for t in (no_repeat or ()))))
  top_p = None if top_p is None or top_p >= 1.0 else float(top_p)
  order = np.argsort([len(p) + len(o) for p, o in zip(prompts, outputs)], kind="stable")
  out_p, out_q = np.zeros(n, np.float32), np.zeros(n, np.float32)
  for s in range(0, n, chunk):
    idx = order[s:s + chunk]
    rows = np.resize(idx, min(chunk, n))
    length = max(len(prompts[i]) + len(outputs[i]) for i in rows)
    length = -(-length // 32) * 32
    seq = np.zeros((len(rows), length), np.int32)
    attn = np.zeros((len(rows), length), bool)
    start = np.zeros(len(rows), np.int32)
    toks = np.zeros((len(rows), steps), np.int32)
    mask = np.zeros((len(rows), steps), bool)
    for r, i in enumerate(rows):
      full = list(prompts[i]) + list(outputs[i])
      seq[r, :len(full)], attn[r, :len(full)] = full, True
      start[r] = len(prompts[i])
      toks[r, :len(outputs[i])], mask[r, :len(outputs[i])] = outputs[i], True
    lp, lq = _selection_logprobs(graphdef, params, seq, attn, start, toks, mask,
                                 temperature=float(temperature), top_p=top_p, no_repeat=ids)
    out_p[idx], out_q[idx] = np.asarray(lp)[:len(idx)], np.asarray(lq)[:len(idx)]
  return out_p, out_q


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_p", "no_repeat"))
def _selection_logprobs(graphdef, params, seq, attn, start, toks, mask, *, temperature, top_p,
                        no_repeat):
  model = nnx.merge(graphdef, params)
  hidden, _ = model.forward(seq, attention_mask=attn)
  steps = toks.shape[1]
  # The logits that predict output token t sit at position start + t - 1.
  pos = jnp.minimum(start[:, None] - 1 + jnp.arange(steps)[None], seq.shape[1] - 1)
  h = jnp.take_along_axis(hidden, pos[:, :, None], axis=1)           # [B, S, H]
  logits = model.logits(h).astype(jnp.float32)                      # [B, S, V]
  neg = jnp.finfo(jnp.float32).min
  if no_repeat:
    rep = jnp.asarray(no_repeat, jnp.int32)
    written = (toks[:, :, None] == rep) & mask[:, :, None]         # [B, S, R]
    # Seen before step t: written at some step < t.
    seen = (jnp.cumsum(written, axis=1) - written) > 0
    logits = logits.at[:, :, rep].set(jnp.where(seen, neg, logits[:, :, rep]))
  onehot = jax.nn.one_hot(toks, logits.shape[-1], dtype=bool)
  pick = lambda x: jnp.sum(jnp.where(onehot, x, 0.0), axis=-1)
  logp = pick(jax.nn.log_softmax(logits, axis=-1))
  scaled = logits / temperature
  b, s, v = scaled.shape
  filtered = sampling.filter_logits(scaled.reshape(b * s, v), None, top_p).reshape(b, s, v)
  filtered = jnp.where(onehot, scaled, filtered)  # the sampled token is in the nucleus
  logq = pick(jax.nn.log_softmax(filtered, axis=-1))
  m = mask.astype(jnp.float32)
  return jnp.sum(logp * m, axis=1), jnp.sum(logq * m, axis=1)


def answers(graphdef, params, fmt, examples, passages) -> list[str]:
  """Greedy generator answers for (example, passages) pairs."""
  outs = generate_completions(graphdef, params, fmt,
                              [fmt.generator_prompt(e, p) for e, p in zip(examples, passages)],
                              fmt.gen_new, jax.random.key(0))
  return [fmt.decode(o) for o in outs]


def evaluate(graphdef, states, roles, fmt, examples, mode: str) -> dict[str, float]:
  """Held-out EM / F1 / accuracy (points) and gold recall of the generator's
  passages; mode "selector" (greedy selection) or "bm25" (BM25's top_k)."""
  if mode == "selector":
    _, perms, valid = select(graphdef, states[roles["selector"]].params, fmt, examples,
                             jax.random.key(0))
    passages = [fmt.docs(e, p) for e, p in zip(examples, perms)]
  else:
    passages, valid = [fmt.bm25_docs(e) for e in examples], np.ones(len(examples), bool)
  preds = answers(graphdef, states[roles["generator"]].params, fmt, examples, passages)
  scores = metrics_lib.score_answers(preds, [e.answers for e in examples])
  out = {f"eval/{k}": 100.0 * v for k, v in scores.items()}
  # Over the questions with gold passages (every question of the built-in
  # world; real data may name none for some).
  pairs = [(set(fmt.world.gold[e.id]), set(p)) for e, p in zip(examples, passages)
           if fmt.world.gold[e.id]]
  mean = lambda xs: float(np.mean(xs)) if xs else 0.0
  # gold_recall: every gold passage selected; gold_passage_recall: the share of
  # gold passages selected (a 2-hop question with one of its two counts 1/2).
  out["eval/gold_recall"] = 100.0 * mean([g <= p for g, p in pairs])
  out["eval/gold_passage_recall"] = 100.0 * mean([len(g & p) / len(g) for g, p in pairs])
  out["eval/valid_rankings"] = 100.0 * float(np.mean(valid))
  return out
