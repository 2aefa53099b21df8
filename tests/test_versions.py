"""``dla.package_versions``: what the benchmark and evaluation records say they ran with."""

import pytest

import dla
from dla import package_versions


def test_versions_missing_and_unversioned(tmp_path, monkeypatch):
    (tmp_path / "dla_test_broken_pkg.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    got = package_versions(("dla", "math", "dla_test_no_such_pkg"))
    assert got == {"dla": dla.__version__, "math": "unknown", "dla_test_no_such_pkg": "not installed"}
    assert package_versions(("math",), unknown="installed") == {"math": "installed"}
    with pytest.raises(RuntimeError, match="broken on import"):  # only ImportError is reported by default
        package_versions(("dla_test_broken_pkg",))
    assert package_versions(("dla_test_broken_pkg",), catch=(Exception,)) == {"dla_test_broken_pkg": "not installed"}
