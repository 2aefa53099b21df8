"""Dynamic Linear Attention (DLA): multi-state linear attention with data-dependent state boundaries
and a capacity-bounded state cache.

Importing ``dla`` needs only torch. When transformers is installed, model type ``dla`` is registered with its
``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` as soon as transformers is imported (at once if it already
is), so ``import dla`` then ``AutoModelForCausalLM.from_pretrained(DIR)`` works; until then ``import dla`` does not
pay for importing transformers.
"""

import importlib.abc
import importlib.util
import sys
import warnings
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


def _register_models() -> None:
    """Import :mod:`dla.models` (which registers ``dla`` with transformers' Auto classes); a transformers that
    cannot run the models (too old, broken install) costs a warning, never the caller's import."""
    try:
        import dla.models  # noqa: F401
    except Exception as e:  # noqa: BLE001 - whatever the failure, the caller's own import must go on
        warnings.warn(f"dla: model type 'dla' is not registered with transformers ({type(e).__name__}: {e}); "
                      f"dla.models needs transformers >= 5.4", RuntimeWarning, stacklevel=2)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``transformers`` is first imported, wraps its loader so that :func:`_register_models`
    runs right after transformers' ``__init__`` (a post-import hook; removed from ``sys.meta_path`` on first use)."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_models()

        spec.loader.exec_module = exec_then_register
        return spec


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a placeholder None in sys.modules
        return False


if sys.modules.get("transformers") is not None:
    _register_models()
elif "transformers" not in sys.modules and _installed("transformers"):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
