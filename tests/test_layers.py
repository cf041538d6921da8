"""The layering of docs/architecture.md, as import-linter contracts in pyproject.toml."""

from __future__ import annotations

import subprocess

from tests.kernel_helpers import REPO, VENV_BIN


def test_the_import_contracts_hold() -> None:
    """A module that imports across a layer (core → kernel, views → kernel, …) fails here."""
    proc = subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
