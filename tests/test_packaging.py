"""What `pip install .` puts in the wheel: every folder of the package (setuptools finds only folders
with an __init__.py, so one without would be missing from a non-editable install)."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent


def test_every_folder_of_the_package_is_in_the_wheel():
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "plm_ray").rglob("*.py")}
    folders = {f for f in folders if "__pycache__" not in f}
    assert folders == set(find_packages(str(REPO), include=["plm_ray*"]))
