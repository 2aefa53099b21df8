"""The chunked form in PyTorch (``docs/design.md`` section 4): one module per stage, the CPU fallback of every
layer and the reference of the Triton kernels (:mod:`dla.ops.triton` has the same stage functions).

Stages (what :func:`dla.ops.chunk_dla` runs, in order):

- layout: :func:`heads_copy`, the caller's ``[B, T, G, D]`` tensors as head-major copies;
- backbone, one per backbone: :func:`backbone_mamba2_fwd` / :func:`backbone_gdn_fwd` (and ``_bwd``): chunk states
  ``P``, pseudo-values ``u``, the plain output;
- :func:`scan`: the segmentation (no gradient);
- readout: :func:`lam_fwd`, :func:`readout_fwd`, :func:`combine_fwd` (and ``_bwd``);
- decode: :func:`step`.
"""

from dla.ops.chunked.backbone_gdn import backbone_gdn_bwd, backbone_gdn_fwd
from dla.ops.chunked.backbone_mamba2 import backbone_mamba2_bwd, backbone_mamba2_fwd
from dla.ops.chunked.decode import step
from dla.ops.chunked.layout import heads_copy
from dla.ops.chunked.readout import combine_bwd, combine_fwd, lam_bwd, lam_fwd, readout_bwd, readout_fwd
from dla.ops.chunked.segmentation import scan

NAME = "torch"

__all__ = ["heads_copy", "backbone_mamba2_fwd", "backbone_mamba2_bwd", "backbone_gdn_fwd", "backbone_gdn_bwd", "scan",
           "lam_fwd", "lam_bwd", "readout_fwd", "readout_bwd", "combine_fwd", "combine_bwd", "step", "NAME"]
