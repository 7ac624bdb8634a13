"""Run from a checkout, nothing of the project hides an installed package of the same name.

Python puts the working directory first on ``sys.path`` for ``python -m …`` and ``python -c``, so
a top-level folder with an ``__init__.py`` wins over any installed package of that name. transformers
imports Hugging Face's ``kernels`` whenever it loads a model, and the project keeps its Triton sources
in a top-level ``kernels/`` folder: that folder must stay a plain source folder (built into
``layerprof.kernels``), and so must every other top-level folder.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The project's one top-level import; setup.py is the build script.
IMPORTABLE = {"layerprof", "setup"}
# Top-level folder names that are also names of installable packages (kernels: Hugging Face's,
# which transformers ≥ 5 requires; the others exist on PyPI too).
FOLDERS = ("kernels", "tests", "bench", "benchmarks", "examples", "docs", "studies")


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def _resolve(name: str, cwd: Path):
    """Where ``import name`` would come from, run from ``cwd``: (origin, search locations) or None."""
    code = ("import importlib.util, json; s = importlib.util.find_spec(%r); "
            "print(json.dumps(None if s is None else [s.origin, list(s.submodule_search_locations or [])]))" % name)
    res = _run(code, cwd)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_no_top_level_package_but_layerprof():
    regular = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    modules = sorted(p.stem for p in ROOT.glob("*.py"))
    stray = sorted(set(regular + modules) - IMPORTABLE)
    assert not stray, (f"top-level importable names {stray} would shadow installed packages of those names "
                       "when run from a checkout; keep sources in plain folders (no __init__.py)")


@pytest.mark.parametrize("name", FOLDERS)
def test_top_level_folder_shadows_no_installed_package(name, tmp_path):
    from_checkout = _resolve(name, ROOT)
    elsewhere = _resolve(name, tmp_path)
    if elsewhere is not None:
        assert from_checkout == elsewhere, f"`import {name}` from the checkout finds {from_checkout}, not {elsewhere}"
    else:  # not installed: at most a namespace portion, which any installed package would win over
        assert from_checkout is None or from_checkout[0] in (None, "namespace"), from_checkout


def test_transformers_and_layerprof_import_from_the_checkout():
    pytest.importorskip("transformers")
    res = _run("import transformers.integrations.hub_kernels, layerprof.callback, layerprof.kernels", ROOT)
    assert res.returncode == 0, res.stderr
    cli = subprocess.run([sys.executable, "-m", "layerprof.cli", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0 and "usage: layerprof" in cli.stdout, cli.stderr


def test_layerprof_kernels_resolves_to_the_top_level_sources():
    pytest.importorskip("triton")
    res = _run("import layerprof.kernels.stats as s; print(s.__file__)", ROOT)
    assert res.returncode == 0, res.stderr
    # An editable install reads the folder in place; a wheel carries a copy of it.
    assert Path(res.stdout.strip()).read_bytes() == (ROOT / "kernels" / "stats.py").read_bytes()


def test_a_broken_dependency_is_reported_with_its_own_error(tmp_path):
    """transformers installed but failing to import (here: a shadowing ``kernels`` package put first on
    the path) must not be reported as "not installed": the message carries the original error."""
    pytest.importorskip("transformers")
    shadow = tmp_path / "kernels"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    res = _run(f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import layerprof.callback", ROOT)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "installed but failed to import" in last and "kernels" in last, last
    assert "pip install transformers" not in last


def test_dependency_error_says_absent_or_broken():
    from layerprof.utils.errors import dependency_error

    absent = dependency_error("no_such_package_xyz", "the thing", ImportError("x"), install="no-such-package")
    assert "not installed: pip install no-such-package" in str(absent)
    broken = dependency_error("json", "the thing", ImportError("cannot import name 'X' from 'y'"))
    assert "installed but failed to import (ImportError: cannot import name 'X' from 'y')" in str(broken)
