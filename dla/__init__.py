"""Dynamic Linear Attention (DLA): multi-state linear attention with data-dependent state boundaries
and a capacity-bounded state cache."""

from typing import Dict, Iterable, Tuple, Type

__version__ = "0.1.0"


def package_versions(names: Iterable[str], unknown: str = "unknown",
                     catch: Tuple[Type[BaseException], ...] = (ImportError,)) -> Dict[str, str]:
    """``{name: version}`` of the packages ``names`` (what every benchmark and evaluation record says it ran with):
    ``unknown`` for a package without ``__version__``, ``"not installed"`` where importing it raises one of
    ``catch``."""
    out = {}
    for name in names:
        try:
            out[name] = str(getattr(__import__(name), "__version__", unknown))
        except catch:
            out[name] = "not installed"
    return out
