"""One-shot pruning of causal LMs: Wanda, SparseGPT and magnitude, unstructured or N:M, layer by layer.

>>> from hf_plugins.pruning import calibration_windows, arithmetic_texts, prune_model
>>> ids = calibration_windows(tokenizer, arithmetic_texts(), nsamples=128, seqlen=512)
>>> report = prune_model(model, "wanda", sparsity=0.5, calibration=ids)
>>> print(report.format_table())

See docs/pruning.md.
"""

from .calibration import arithmetic_texts, calibration_windows, text_file_texts
from .driver import METHODS, PruningReport, decoder_layers, prunable_linears, prune_model, sparsity_report
from .magnitude import magnitude_mask, prune_magnitude_
from .masks import check_n_m, n_m_mask, parse_n_m, row_mask
from .sparsegpt import SparseGPTStats, prune_sparsegpt_, sparsegpt_prune
from .wanda import WandaStats, prune_wanda_, wanda_mask, wanda_scores


__all__ = [
    "METHODS",
    "PruningReport",
    "SparseGPTStats",
    "WandaStats",
    "arithmetic_texts",
    "calibration_windows",
    "check_n_m",
    "decoder_layers",
    "magnitude_mask",
    "n_m_mask",
    "parse_n_m",
    "prunable_linears",
    "prune_magnitude_",
    "prune_model",
    "prune_sparsegpt_",
    "prune_wanda_",
    "row_mask",
    "sparsegpt_prune",
    "sparsity_report",
    "text_file_texts",
    "wanda_mask",
    "wanda_scores",
]
