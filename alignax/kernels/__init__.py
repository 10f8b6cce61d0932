"""alignax.kernels: block-sparse (DeltaLLM-style) attention and its masks.

Imports only jax and numpy. See `docs/sparse_attention.md`.
"""
from alignax.kernels.attention import IMPLEMENTATIONS
from alignax.kernels.attention import block_sparse_attention
from alignax.kernels.block_mask import BlockMask
from alignax.kernels.block_mask import local_window_block_mask
from alignax.kernels.block_mask import MaskRule
from alignax.kernels.block_mask import prefix_group_block_mask
from alignax.kernels.block_select import block_scores
from alignax.kernels.block_select import hybrid_block_mask
from alignax.kernels.block_select import topk_blocks
from alignax.kernels.decode import decode_attention
from alignax.kernels.delta import delta_threshold
from alignax.kernels.reference import block_sparse_attention_reference

__all__ = [
    "IMPLEMENTATIONS", "block_sparse_attention", "block_scores", "BlockMask",
    "hybrid_block_mask", "local_window_block_mask", "MaskRule",
    "prefix_group_block_mask", "topk_blocks",
    "block_sparse_attention_reference", "decode_attention", "delta_threshold",
]
