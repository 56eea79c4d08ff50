"""The import floors of docs/architecture.md hold (import-linter contracts in pyproject.toml)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
  lint_imports = pathlib.Path(sys.executable).parent / 'lint-imports'
  assert lint_imports.exists(), 'install the test extras: pip install -e .[test]'
  result = subprocess.run(
      [str(lint_imports), '--no-cache'],  # reads ROOT/pyproject.toml
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'PYTHONPATH': str(ROOT)})
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  assert 'BROKEN' not in result.stdout
