r"""The third side of benchmarks/real_model_vs_trl.py: Google's tunix (GRPO).

tunix (PyPI `google-tunix`) is not in alignax's venv; it lives in its own:

  python3 -m venv runs/venv_tunix          # under runs/ (git-ignored)
  runs/venv_tunix/bin/pip install google-tunix==0.1.7 jax   # jax[cpu]; not jax[tpu]

`run_tunix(args, until)` (called from alignax's venv) runs this file under
TUNIX_PYTHON (default runs/venv_tunix/bin/python) and returns what
real_model_vs_trl.run_trl returns: per-step seconds with the generation /
update split, train rewards, and evaluations (greedy accuracy and mean@4 on the
held-out prompts), plus `differences` (what tunix cannot match of the TRL /
alignax settings) and `peak_rss_gib` of the tunix process.

No resume: tunix's orbax checkpoints would resume the model and optimiser, but
each segment would pay the model load and every compile again, so one call
runs steps 0..until in one process and evaluates at every multiple of
`args.segment` (the evaluations are not counted in the step times).

Also: `python benchmarks/tunix_side.py --logits TOKENS.npy OUT.npy --model M`
writes tunix's logits for the token ids in TOKENS.npy ([B, T] int) to OUT.npy,
to check the loader against transformers.
"""
import argparse
import dataclasses
import json
import os
import resource
import subprocess
import time

# The same settings, data and reward as the other sides (that file imports only the
# standard library at its top, so tunix's venv can import it).
from real_model_vs_trl import LR, ROOT, WORKLOADS, _rewards, _rows

# The addition workload only (real_model_vs_trl refuses tunix with another).
_W = WORKLOADS["addition"]
GROUP, PROMPTS, NEW_TOKENS, EVAL_K = _W.group, _W.prompts, _W.new_tokens, _W.eval_k

TUNIX_PYTHON = os.environ.get("TUNIX_PYTHON",
                              os.path.join(ROOT, "runs", "venv_tunix", "bin", "python"))
# As real_model_vs_trl.run_trl's GRPOConfig.
WARMUP, MIN_LR_RATIO, MAX_GRAD_NORM = 2, 0.1, 1.0
EPSILON, EPSILON_HIGH = 0.2, 0.28
MAX_PROMPT_TOKENS = 64  # the padded prompt length (SmolLM2's rendered prompts are ~40)
# Prompts per evaluation call (_trl_eval uses 64): tunix's prefill returns logits at every
# prompt position, [rows, 64, vocab] fp32, so 16 prompts (64 rows at mean@4) keep it < 1 GB.
EVAL_BATCH = 16

DIFFERENCES = {
    "pad_token": "tunix masks every position whose id equals the tokenizer's pad id (prompt"
                 " mask, attention mask, completion mask). SmolLM2's pad is <|im_end|> (id 2),"
                 " which is also in every prompt (end of the system and user turns), so the"
                 " tunix side sets pad to <|endoftext|> (id 0); with pad=2 tunix would drop the"
                 " prompt's <|im_end|> tokens from attention.",
    "eos_in_loss": "tunix cuts each completion before its first EOS and trains on the tokens"
                   " before it; TRL's completion mask includes the EOS token (and so its"
                   " log-prob term in the loss).",
    "rope_theta": "tunix 0.1.7's Llama3 attention calls apply_rope without the config's"
                  " rope_theta (so it always uses 1e6); the tunix side patches"
                  " tunix.models.llama3.model.apply_rope to use config.json's rope_theta.",
    "advantage_eps": "tunix: (r - mean) / (std_ddof1 + 1e-6); TRL scale_rewards='group':"
                     " (r - mean) / (std_ddof1 + 1e-4).",
    "loss": "GRPOLearner with DAPO's loss: policy_loss_fn grpo, loss_agg_mode token-mean,"
            " epsilon 0.2, epsilon_high 0.28, beta 0 (no KL, no reference model),"
            " num_iterations 1 (ratio = 1, as TRL/alignax with one update per batch); same as"
            " TRL's loss_type='dapo' up to the EOS token above. tunix's DAPOLearner is not"
            " usable here: it forces beta=None and 0.1.7 then needs a reference model"
            " (`beta != 0.0`), and it adds an overlong-length reward unless disabled.",
    "sampling_seed": "tunix's rollout uses PRNGKey(RolloutConfig.seed) per generate call (a fixed"
                     " key if unset); the tunix side passes seed*100003 + step so each step"
                     " samples with a fresh key. Random streams differ from TRL/alignax anyway.",
    "data_order": "the training rows are shuffled with numpy (seed) and taken 4 per step;"
                  " TRL's RepeatSampler and alignax each use their own order.",
    "eval": "greedy and temperature-1 samples with tunix's own sampler (no top-k/top-p),"
            " completions cut at EOS, as _trl_eval, but prompts in batches of 16 (not 64).",
    "has_number_reward": "not passed (TRL has it at weight 0: logged, not trained on).",
    "no_resume": "all steps in one process (no per-segment resume); first step holds the compiles.",
}


# --- run from alignax's venv: a subprocess under tunix's ---------------------------


def run_tunix(args, until: int) -> dict:
  """Steps 0..until of tunix GRPO in one subprocess under TUNIX_PYTHON."""
  cmd = [TUNIX_PYTHON, os.path.abspath(__file__), f"--model={args.model}",
         f"--until={until}", f"--seed={args.seed}", f"--eval_size={args.eval_size}",
         f"--segment={args.segment}", f"--steps={args.steps}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
  if proc.returncode:
    raise RuntimeError(f"tunix side failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# --- inside tunix's venv ------------------------------------------------------------


def _hf_config(path):
  with open(os.path.join(path, "config.json")) as f:
    cfg = json.load(f)
  theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
  if cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {}).get("rope_type",
                                                                       "default") != "default":
    raise NotImplementedError("only default RoPE (no scaling) is mapped")
  return cfg, float(theta)


def load_model(path, mesh):
  """tunix Llama3 from an HF Llama folder (tied embeddings, any GQA head counts)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tunix.models.llama3 import model as llama  # pylint: disable=g-import-not-at-top
  from tunix.models.llama3 import params as llama_params  # pylint: disable=g-import-not-at-top
  cfg, theta = _hf_config(path)
  rope = llama.apply_rope
  if getattr(rope, "_theta", None) != theta:  # tunix 0.1.7 ignores config.rope_theta
    base = getattr(rope, "_base", rope)
    def apply_rope(inputs, positions, head_dim, rope_theta=None):
      del rope_theta
      return base(inputs, positions, head_dim=head_dim, rope_theta=theta)
    apply_rope._theta, apply_rope._base = theta, base
    llama.apply_rope = apply_rope
  config = llama.ModelConfig(
      num_layers=cfg["num_hidden_layers"], vocab_size=cfg["vocab_size"],
      embed_dim=cfg["hidden_size"], hidden_dim=cfg["intermediate_size"],
      num_heads=cfg["num_attention_heads"],
      head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
      num_kv_heads=cfg["num_key_value_heads"], rope_theta=theta, norm_eps=cfg["rms_norm_eps"],
      weight_tying=bool(cfg.get("tie_word_embeddings", False)))
  return llama_params.create_model_from_safe_tensors(path, config, mesh=mesh, dtype=jnp.float32)


def _mesh():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # Auto axes (jax.make_mesh makes Explicit ones, which tunix's gathers reject).
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))


def _tokenizer(path):
  import transformers  # pylint: disable=g-import-not-at-top
  tok = transformers.AutoTokenizer.from_pretrained(path)
  if tok.pad_token_id == tok.eos_token_id or tok.pad_token_id is None:
    tok.pad_token = tok.unk_token or "<|endoftext|>"  # see DIFFERENCES["pad_token"]
  return tok


def _render(tok, prompt):
  return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                 add_generation_prompt=True)


def logits_main(model_path, tokens_path, out_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  mesh = _mesh()
  with mesh:
    model = load_model(model_path, mesh)
    ids = jnp.asarray(np.load(tokens_path), jnp.int32)
    b, t = ids.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    logits, _ = model(ids, positions, None, mask)
  np.save(out_path, np.asarray(logits, np.float32))


def _run(args, until: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from tunix.rl import rl_cluster as rl_cluster_lib  # pylint: disable=g-import-not-at-top
  from tunix.rl.grpo import grpo_learner  # pylint: disable=g-import-not-at-top
  from tunix.rl.rollout import base_rollout  # pylint: disable=g-import-not-at-top
  arithmetic_rewards = _rewards()

  tok = _tokenizer(args.model)
  train = _rows(_W.file("train"))
  held_out = _rows(_W.file("eval"))[:args.eval_size]
  order = np.random.default_rng(args.seed).permutation(len(train))

  def batches():
    for step in range(until):
      rows = [train[order[(step * PROMPTS + i) % len(train)]] for i in range(PROMPTS)]
      # numpy columns: tunix repeats each leaf G times with np.repeat(axis=0)
      yield {"prompts": np.array([_render(tok, r["prompt"]) for r in rows]),
             "answer": np.array([r["answer"] for r in rows])}

  mesh = _mesh()
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, LR, WARMUP, max(args.steps, WARMUP + 1), end_value=MIN_LR_RATIO * LR)
  optimizer = optax.chain(
      optax.clip_by_global_norm(MAX_GRAD_NORM),
      optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
  rollout_config = base_rollout.RolloutConfig(
      max_tokens_to_generate=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=None,
      max_prompt_length=MAX_PROMPT_TOKENS, kv_cache_size=MAX_PROMPT_TOKENS + NEW_TOKENS,
      eos_tokens=[tok.eos_token_id])
  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                    rl_cluster_lib.Role.ROLLOUT: mesh},
      rollout_engine="vanilla", offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=optimizer, eval_every_n_steps=10**9, max_steps=until,
          mini_batch_size=PROMPTS, train_micro_batch_size=PROMPTS,
          checkpoint_root_directory=None, metrics_logging_options=None,
          pbar_description=None),
      rollout_config=rollout_config)
  # DAPOLearner forces beta=None, and tunix 0.1.7 then asks for a reference model
  # (`if beta != 0.0`): GRPOLearner with DAPO's loss settings instead.
  algo = grpo_learner.GRPOConfig(
      num_generations=GROUP, num_iterations=1, beta=0.0, epsilon=EPSILON,
      loss_agg_mode="token-mean", loss_algo="grpo")
  algo.epsilon_high = EPSILON_HIGH  # read by tunix's grpo loss when present

  with mesh:
    model = load_model(args.model, mesh)
    cluster = rl_cluster_lib.RLCluster(actor=model, reference=None, tokenizer=tok,
                                       cluster_config=cluster_config)
    rewards_seen = []

    def reward(prompts, completions, answer, **kw):
      out = arithmetic_rewards.last_number_correct(prompts, completions, answer=list(answer))
      if kw.get("mode", "train") == "train":
        rewards_seen.append(float(np.mean(out)))
      return out
    reward.__name__ = "last_number_correct"
    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo,
                                       reward_fns=[reward])
    rollout = cluster.rollout
    generate = rollout.generate  # evaluations call it untimed, with their own seeds

    def evaluate(step):
      prompts = [_render(tok, r["prompt"]) for r in held_out]
      gold = [r["answer"] for r in held_out]
      greedy, sampled = [], []
      for lo in range(0, len(prompts), EVAL_BATCH):
        p, g = prompts[lo:lo + EVAL_BATCH], gold[lo:lo + EVAL_BATCH]
        out = generate(p, dataclasses.replace(rollout_config, temperature=0.0,
                                                       top_p=None, seed=0))
        greedy += arithmetic_rewards.last_number_correct(None, out.text, answer=g)
        out = generate([x for x in p for _ in range(EVAL_K)], dataclasses.replace(
            rollout_config, seed=args.seed + step + lo + 7919))
        sampled += arithmetic_rewards.last_number_correct(
            None, out.text, answer=[a for a in g for _ in range(EVAL_K)])
      return {"step": step, "accuracy": sum(greedy) / len(greedy),
              "mean@4": sum(sampled) / len(sampled)}

    evals = [evaluate(0)]
    timers = {"generation": 0.0, "calls": 0}

    def timed_generate(prompts, config, **kw):
      t0 = time.perf_counter()
      try:
        timers["calls"] += 1
        prompts = [str(x) for x in prompts]  # np.str_ after tunix's np.repeat; HF wants str
        return generate(prompts, dataclasses.replace(
            config, seed=args.seed * 100003 + timers["calls"]), **kw)
      finally:
        timers["generation"] += time.perf_counter() - t0
    rollout.generate = timed_generate

    steps = []
    update_actor = cluster.update_actor

    def timed_update(*a, **k):
      update_actor(*a, **k)
      now = time.perf_counter()
      step = cluster.actor_trainer.train_steps
      seconds = now - timers["start"]
      steps.append({"step": step, "seconds": seconds, "generation": timers["generation"],
                    "update": seconds - timers["generation"],
                    "reward": rewards_seen[-1] if rewards_seen else None})
      if step % args.segment == 0 or step == until:
        evals.append(evaluate(step))
      timers.update(generation=0.0, start=time.perf_counter())
    cluster.update_actor = timed_update

    timers["start"] = time.perf_counter()
    learner.train(batches())
  if not evals or evals[-1]["step"] != steps[-1]["step"]:
    evals.append(evaluate(steps[-1]["step"]))
  return {"steps": steps, "evals": evals, "differences": DIFFERENCES,
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=os.path.join(ROOT, "runs", "smollm2"))
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--until", type=int, default=None)
  p.add_argument("--segment", type=int, default=10)
  p.add_argument("--eval_size", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--logits", nargs=2, metavar=("TOKENS_NPY", "OUT_NPY"))
  args = p.parse_args()
  if args.logits:
    logits_main(args.model, *args.logits)
    return
  print(json.dumps(_run(args, args.until or args.steps)))


if __name__ == "__main__":
  main()
