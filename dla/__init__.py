"""Dynamic Linear Attention (DLA): multi-state linear attention with data-dependent state boundaries
and a capacity-bounded state cache."""

__version__ = "0.1.0"
