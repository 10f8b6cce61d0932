"""`model.param_dtype`, `model.dtype` and `train.remat` (the same keys and
schema in every LLM binary, `model_setup.PRECISION` / `REMAT`) reach the models
exsearch, dro and moat train, and a tiny EM phase runs with bfloat16
weights and compute and full remat."""
import os

import jax
import numpy as np
import pytest
from flax import nnx

from alignax.experiments import dro, exsearch, grpo, moat
from alignax.experiments.runtime import config_files, config_schema, pretrained

BF16 = {"model.param_dtype": "bfloat16", "model.dtype": "bfloat16", "train.remat": "full"}


def _config(binary, **overrides):
  path = os.path.join(os.path.dirname(binary.__file__), "configs",
                      binary.__name__.rsplit(".", 1)[1] + ".py")
  config = config_files.load_config_file(path + ":tiny")
  for key, value in overrides.items():
    parent, leaf = key.split(".")
    config[parent][leaf] = value
  return config, path


@pytest.mark.parametrize("binary", [exsearch, dro, moat, grpo])
def test_same_keys_and_schema_in_every_binary(binary):
  config, path = _config(binary)
  assert (config.model.param_dtype, config.model.dtype, config.train.remat) == (
      "float32", "float32", "none")
  config_schema.validate_config(_config(binary, **BF16)[0], path)
  with pytest.raises(config_schema.ConfigError, match="train.remat='some'"):
    config_schema.validate_config(_config(binary, **{"train.remat": "some"})[0], path)
  with pytest.raises(config_schema.ConfigError, match="model.dtype='fp8'"):
    config_schema.validate_config(_config(binary, **{"model.dtype": "fp8"})[0], path)


class _Loaded(Exception):
  """Ends a run once its models are loaded."""


# dro runs one EM phase in bf16 with full remat (the weighted-EM update that
# exsearch shares); exsearch and moat stop once their models are loaded.
@pytest.mark.parametrize("binary,phase", [(dro, True), (exsearch, False), (moat, False)])
def test_options_reach_the_trained_models(binary, phase, tmp_path, monkeypatch):
  loaded = []
  build_or_load_hf = pretrained.build_or_load_hf

  def spy(*args, **kwargs):
    models, tokenizer = build_or_load_hf(*args, **kwargs)
    loaded.extend(models.values())
    if not phase:
      raise _Loaded
    return models, tokenizer
  monkeypatch.setattr(pretrained, "build_or_load_hf", spy)
  config, _ = _config(binary, **BF16)
  if phase:
    summary = binary.run(config, str(tmp_path), stop_after=1, progress=False)
    assert np.isfinite(summary["eval/em_after"])
  else:
    with pytest.raises(_Loaded):
      binary.run(config, str(tmp_path), progress=False)
  assert loaded
  for model in loaded:
    assert (model.config.param_dtype, model.config.dtype, model.config.remat) == (
        "bfloat16", "bfloat16", "full")
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {x.dtype for x in params} == {np.dtype("bfloat16")}
