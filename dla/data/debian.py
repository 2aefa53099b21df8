"""Fetch Debian packages without installing them: ``apt-get download`` into a directory, ``dpkg-deb`` to unpack.

Nothing here needs root: ``apt-get download`` writes into the current directory, and ``dpkg-deb -x`` unpacks a
package's files under any directory (no maintainer scripts run, nothing is registered with dpkg). ``apt-get
update`` refreshes the package lists and needs root (or an apt configuration the user may write); when it cannot
run, the lists already on the machine are used.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence, Union

logger = logging.getLogger(__name__)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: fetching Debian packages needs a Debian or Ubuntu machine with apt "
                           f"and dpkg (or pass the .deb files you downloaded elsewhere)")
    return path


def _run(args: Sequence[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def apt_update() -> bool:
    """Run ``apt-get update``; returns whether it succeeded (a failure is logged, not raised: the package lists
    already on the machine may still name every package)."""
    result = _run([_tool("apt-get"), "update", "-q"])
    if result.returncode != 0:
        logger.warning("apt-get update failed (%s); using the package lists already on this machine",
                       result.stderr.strip().splitlines()[-1:] or result.returncode)
    return result.returncode == 0


def find_deb(directory: Union[str, os.PathLike], package: str) -> Optional[Path]:
    """The newest-named ``<package>_*.deb`` in ``directory``, or None."""
    matches = sorted(Path(directory).glob(f"{package}_*.deb"))
    return matches[-1] if matches else None


def download(packages: Sequence[str], directory: Union[str, os.PathLike]) -> dict[str, Optional[Path]]:
    """``apt-get download`` every package not already in ``directory`` (one call per package, so one missing
    package does not stop the others).

    Returns:
        ``{package: path of its .deb, or None when apt could not get it}``.
    """
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Optional[Path]] = {}
    for package in packages:
        deb = find_deb(out_dir, package)
        if deb is None:
            result = _run([_tool("apt-get"), "download", "-q", package], cwd=out_dir)
            deb = find_deb(out_dir, package)
            if deb is None:
                logger.warning("apt-get download %s failed: %s", package,
                               (result.stderr.strip().splitlines() or ["no .deb written"])[-1])
        found[package] = deb
    return found


def deb_field(deb: Union[str, os.PathLike], field: str) -> str:
    """A control field of a ``.deb`` (``Version``, ``Package``, ...), via ``dpkg-deb -f``."""
    result = _run([_tool("dpkg-deb"), "-f", os.fspath(deb), field])
    if result.returncode != 0:
        raise ValueError(f"deb: {os.fspath(deb)!r} is not a readable Debian package ({result.stderr.strip()})")
    return result.stdout.strip()


def extract(deb: Union[str, os.PathLike], root: Union[str, os.PathLike], members: Sequence[str] = ()) -> Path:
    """Unpack a ``.deb``'s files under ``root`` (``dpkg-deb -x``), or only the ``members`` (tar patterns such as
    ``./usr/share/go-*/src/testdata/*.txt``) through ``dpkg-deb --fsys-tarfile | tar -x``.

    Raises:
        ValueError: the package does not unpack, or the patterns match nothing.
    """
    target = Path(root)
    target.mkdir(parents=True, exist_ok=True)
    if not members:
        result = _run([_tool("dpkg-deb"), "-x", os.fspath(deb), os.fspath(target)])
        if result.returncode != 0:
            raise ValueError(f"deb: dpkg-deb -x {os.fspath(deb)!r} failed: {result.stderr.strip()}")
        return target
    tar = subprocess.Popen([_tool("dpkg-deb"), "--fsys-tarfile", os.fspath(deb)], stdout=subprocess.PIPE)
    result = subprocess.run([_tool("tar"), "-x", "--wildcards", "-C", os.fspath(target), *members], stdin=tar.stdout,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tar.stdout.close()
    tar.wait()
    if tar.returncode != 0 or result.returncode != 0:
        raise ValueError(f"members: extracting {list(members)} from {os.fspath(deb)!r} failed: "
                         f"{result.stderr.strip()}")
    return target


__all__ = ["apt_update", "download", "find_deb", "deb_field", "extract"]
