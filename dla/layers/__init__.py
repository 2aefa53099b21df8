"""DLA mixers as plain ``nn.Module``s (no transformers dependency): drop them into any PyTorch model.

Every mixer maps ``hidden [B, T, D]`` to ``[B, T, D]`` and takes an optional ``attention_mask [B, T]``, an
optional layer cache (updated in place for decoding) and optional ``cu_seqlens`` for packed documents.
:class:`DLAGatedDeltaNet` and :class:`DLAMamba2` are the same mixers behind fla's layer interface and ``Cache``
(:mod:`dla.layers.fla`, docs/integrations.md).
"""

from dla.layers.attention import AttentionMixer
from dla.layers.fla import DLAGatedDeltaNet, DLAMamba2
from dla.layers.gated_deltanet import GatedDeltaNetMixer
from dla.layers.mamba2 import Mamba2Mixer
from dla.layers.modules import GatedRMSNorm, RMSNorm, ShortConv
from dla.layers.op import dla_op
from dla.layers.recurrent import RecurrentMixer, capture_segmentations
from dla.layers.state import AttentionLayerCache, RecurrentLayerCache

__all__ = ["Mamba2Mixer", "GatedDeltaNetMixer", "AttentionMixer", "RecurrentMixer", "capture_segmentations", "RMSNorm",
           "GatedRMSNorm", "ShortConv", "RecurrentLayerCache", "AttentionLayerCache", "dla_op", "DLAGatedDeltaNet",
           "DLAMamba2"]
