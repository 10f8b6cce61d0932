"""What the experiment binaries share, one module per concern.

config_files   loading `--config` files, checking `--config.x=...` overrides
config_schema  the SCHEMA rules of config files and `validate_config`
workdir_checks checking and making `--workdir`
model_setup    the LoRA / precision / remat / mesh options of a binary's config
pretrained     Hugging Face folders in and out (warm-up models, final models)
outputs        metrics.jsonl, samples.jsonl and plots under the workdir
loop           the resumable method x iteration loop of the EM binaries
launch         `run_binary`, the absl `__main__` of every binary
"""
