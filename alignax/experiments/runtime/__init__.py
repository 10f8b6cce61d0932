"""What the experiment binaries share, one module per concern.

config_files   loading `--config` files, checking `--config.x=...` overrides
config_schema  typed configs: `Section`, `option`, the rules, `config_dict`,
               `validate_config` (once, returns the frozen typed config)
workdir_checks checking and making `--workdir`
model_setup    the LoRA / precision / remat / mesh sections (declared once)
               and what applies them
pretrained     Hugging Face folders in and out (warm-up models, final models)
outputs        metrics.jsonl, samples.jsonl and plots under the workdir
loop           the resumable method x iteration loop of the EM binaries
launch         `run_binary`, the absl `__main__` of every binary, and
               `start_run`, the start of every binary's `run`
"""
