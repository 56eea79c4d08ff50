"""Every notebook runs top to bottom on tiny settings; none is committed with outputs."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch, tmp_path):
  monkeypatch.setenv('SOSVAE_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('TMPDIR', str(tmp_path))
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(ROOT)}})
  client.execute()  # raises CellExecutionError with the failing cell's traceback
  images = sum(1 for cell in nb.cells if cell.cell_type == 'code'
               for out in cell.get('outputs', [])
               if 'image/png' in out.get('data', {}))
  assert images >= 1, f'{path.name} showed no picture'
  # Smoke runs lived in a temporary folder, which the last cell removed.
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith('sosvae_')]
  # Training shows its progress lines under the cell that trains.
  stderr = '\n'.join(out.get('text', '') for cell in nb.cells if cell.cell_type == 'code'
                     for out in cell.get('outputs', []) if out.get('name') == 'stderr')
  assert 'Training ' in stderr and 'step 6/6' in stderr, stderr[-2000:]
  assert 'Unable to initialize backend' not in stderr


def test_notebooks_document_their_settings():
  for path in NOTEBOOKS:
    settings = nbformat.read(path, as_version=4).cells[1].source
    for name in ('SOSVAE_WORKDIR', 'SOSVAE_BETA_WORKDIR', 'SOSVAE_NOTEBOOK_SMOKE'):
      assert name in settings, (path.name, name)
