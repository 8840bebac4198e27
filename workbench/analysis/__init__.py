"""Where the instruction lives: direct attribution of a direction, attention to the instruction's tokens,
activation patching, necessity/sufficiency of the direction per layer, and the direction's reliability."""

from .alignment import common_suffix, instruction_span
from .attention import InstructionAttention, attention_figure, instruction_attention
from .attribution import Attribution, attribution_figure, direct_attribution
from .metric import Metric, make_metric
from .necessity import NecessitySufficiency, necessity_figure, necessity_sufficiency
from .patching import Patching, activation_patching, patch_effects, patching_figure
from .reliability import Reliability, direction_reliability, reliability_figure, reliability_from_activations
from .run import ANALYSES, AnalysisSizes, analysis_figures, run_analysis

__all__ = [
    "ANALYSES", "AnalysisSizes", "Attribution", "InstructionAttention", "Metric", "NecessitySufficiency", "Patching",
    "Reliability", "activation_patching", "analysis_figures", "attention_figure", "attribution_figure",
    "common_suffix", "direct_attribution", "direction_reliability", "instruction_attention", "instruction_span",
    "make_metric", "necessity_figure", "necessity_sufficiency", "patch_effects", "patching_figure",
    "reliability_figure", "reliability_from_activations", "run_analysis",
]
