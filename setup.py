"""alignax: JAX post-training research framework.

Everything importable lives under the one package `alignax/` (docs/api.md):
bare top-level names such as `kernels` or `agents` would shadow unrelated PyPI
distributions whenever the repository root is on `sys.path`. No `package_dir`
mapping, so an editable install maps only `alignax` (setuptools' finder), not
the repository root.
"""
import os

import setuptools

_PACKAGES = setuptools.find_packages(include=["alignax", "alignax.*"])

_RECSYS = [
    "tensorflow-datasets>=4.9.8,<5",
    "array-record>=0.7,<1",
    "etils[epath]>=1.5",
]

setuptools.setup(
    name="alignax",
    version="0.1.0",
    description=(
        "JAX framework for LLM post-training research: GRPO family, re-weighted"
        " EM, multi-agent alignment, Pareto unlearning, sparse attention."
    ),
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=_PACKAGES,
    package_data={"alignax.experiments": ["configs/*.py"]},
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "chex>=0.1.90,<0.2",
        "numpy>=1.26,<3",
        "transformers>=5.0,<6",
        "tokenizers>=0.21,<1",
        "safetensors>=0.4,<1",
        "absl-py>=2.1,<3",
        "ml-collections>=1.0,<2",
        "bm25s>=0.2.10,<0.4",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6,<3",
        "datasets>=3.0,<6",  # users' prompt data (alignax/agents/data/prompt_data.py)
        "math-verify>=0.7,<1",  # the math_accuracy reward, as TRL uses it
    ],
    extras_require={
        # Real session data sets (MovieLens-1M, Amazon) for alignax.recsys;
        # the synthetic default needs none of it.
        "recsys": _RECSYS,
        # Pretrained models from llama.cpp GGUF files (alignax.framework.gguf).
        "real": ["gguf>=0.10,<1"],
        "test": _RECSYS + [
            "gguf>=0.10,<1",
            "pytest>=8",
            "pytest-xdist>=3.5",
            "scipy>=1.11",
            "torch==2.13.0",
            "trl==1.16.0",
            "peft==0.21.2",  # the LoRA parity tests' reference
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
    },
)
