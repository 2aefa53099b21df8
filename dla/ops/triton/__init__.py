"""The chunked form's stages as Triton kernels: the same stage functions as :mod:`dla.ops.chunked`, computing in
float32 (GPU, or CPU under ``TRITON_INTERPRET=1`` at small shapes).

Stages: :func:`heads_copy`; :func:`backbone_mamba2_fwd` / :func:`backbone_gdn_fwd` (and ``_bwd``); :func:`scan`;
:func:`lam_fwd`, :func:`readout_fwd`, :func:`combine_fwd` (and ``_bwd``); :func:`step`. Launch parameters come from
one :class:`~dla.ops.utils.tuning.Tuning`; the ``tl.dot`` operand mode from :mod:`dla.ops.utils.precision`.
"""

from dla.ops.triton.backbone_gdn import backbone_gdn_bwd, backbone_gdn_fwd
from dla.ops.triton.backbone_mamba2 import backbone_mamba2_bwd, backbone_mamba2_fwd
from dla.ops.triton.decode import step
from dla.ops.triton.layout import combine_bwd, combine_fwd, heads_copy, lam_bwd, lam_fwd
from dla.ops.triton.readout import readout_fwd
from dla.ops.triton.readout_backward import readout_bwd
from dla.ops.triton.segmentation import scan

NAME = "triton"

__all__ = ["heads_copy", "backbone_mamba2_fwd", "backbone_mamba2_bwd", "backbone_gdn_fwd", "backbone_gdn_bwd", "scan",
           "lam_fwd", "lam_bwd", "readout_fwd", "readout_bwd", "combine_fwd", "combine_bwd", "step", "NAME"]
