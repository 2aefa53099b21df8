"""Functional DLA ops, seq-first ``[B, T, H, D]``: references and fast paths compute the same thing."""

from dla.ops.common.score import SCORES
from dla.ops.common.state import POLICIES, DLAState, Segmentation
from dla.ops.dla.masked import masked_dla
from dla.ops.dla.naive import naive_dla

__all__ = ["naive_dla", "masked_dla", "DLAState", "Segmentation", "POLICIES", "SCORES"]
