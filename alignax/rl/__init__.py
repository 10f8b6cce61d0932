"""alignax.rl: the GRPO step as library code, for the binaries and benchmarks.

`GroupBatch` (the typed batch a GRPO-family update trains on) and
`make_group_batch` (sampled completions + rewards per function -> that batch:
reward weights, unscorable completions, advantages by a registered estimator)
are in `alignax.rl.batch`; `rollout` and `grpo_step` (sample -> score ->
batch -> update) in `alignax.rl.step`. Definitions: docs/algorithms.md §2.1;
names: docs/api.md.
"""
# batch first: alignax.framework.train imports alignax.rl.batch, and step imports train.
from alignax.rl.batch import GroupBatch
from alignax.rl.batch import GroupRewards
from alignax.rl.batch import as_group_batch
from alignax.rl.batch import combine_rewards
from alignax.rl.batch import group_advantages
from alignax.rl.batch import group_rewards
from alignax.rl.batch import make_group_batch
from alignax.rl.step import GroupStep
from alignax.rl.step import Rollout
from alignax.rl.step import build_rollout
from alignax.rl.step import finish_rollout
from alignax.rl.step import grpo_step
from alignax.rl.step import off_policy_batch
from alignax.rl.step import rollout
from alignax.rl.step import shard_batch
from alignax.rl.step import start_rollout
