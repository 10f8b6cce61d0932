"""alignax.agents: what a language-model agent trains on, one subpackage per kind.

data       prompt data sets (`prompt_data`), QA data sets (`qa_data`), MOAT tasks
           from files (`moat_data`), built-in verifiable tasks (`tasks`)
worlds     the generated QA worlds (`qa_world`, `dro_world`), MOAT's world and
           tools (`moat_world`), BM25 search over a passage corpus (`retrieval`)
scoring    reward functions with TRL's convention (`rewards`), answer metrics
           and ranked-list parsing (`answer_metrics`)
rollouts   batched multi-turn tool rollouts over one KV cache (`multi_turn`)
methods    the agents of one method each: DRO's selector and generator
           (`dro_agents`), MOAT's planner and grounder (`moat_agents`) and
           its critics (`moat_critic`)

The modules `moat_data`, `moat_world`, `prompt_data`, `rewards` and `tasks`
directly in this folder are deprecated aliases of their new paths (docs/api.md).
"""
