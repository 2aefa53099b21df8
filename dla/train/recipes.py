"""Recipes: the config files under the repository's ``configs/`` directory, found by name or by path."""

from __future__ import annotations

from pathlib import Path
from typing import Union

CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
"""File types a recipe may have."""

RECIPES_DIR = Path(__file__).resolve().parents[2] / "configs"
"""``configs/`` next to the ``dla`` package (a source checkout or an editable install)."""


def list_recipes() -> list[str]:
    """Names (file stems) of the recipes in ``RECIPES_DIR``, sorted; files starting with ``_`` are shared bases
    (``base: _paper.yaml``), not recipes. Empty when the directory is absent."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(p.stem for p in RECIPES_DIR.iterdir()
                  if p.suffix in CONFIG_SUFFIXES and p.is_file() and not p.name.startswith("_"))


def resolve_recipe(name_or_path: Union[str, Path]) -> Path:
    """An existing config file: ``name_or_path`` itself, or ``configs/<name>.<yaml|yml|json|toml>``.

    Raises:
        FileNotFoundError: neither exists; the message lists the known recipe names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.parent == Path(".") and not path.suffix:
        for suffix in CONFIG_SUFFIXES:
            candidate = RECIPES_DIR / f"{path.name}{suffix}"
            if candidate.is_file():
                return candidate
    known = ", ".join(list_recipes()) or f"none found in {RECIPES_DIR}"
    raise FileNotFoundError(f"config: no file {str(name_or_path)!r} and no recipe of that name; recipes: {known}")


__all__ = ["RECIPES_DIR", "CONFIG_SUFFIXES", "list_recipes", "resolve_recipe"]
