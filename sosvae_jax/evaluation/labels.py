"""Class labels of a dataset split, for the feature classifier of classifier FID.

The training pipeline reads images only; the classifier that classifier FID
uses as its feature network needs the labels too. Supported: the IDX files
of (Fashion-)MNIST and tfds ArrayRecord sources (any dataset with a 'label'
feature). Image folders carry no labels.
"""

from __future__ import annotations

import os

import numpy as np

from sosvae_jax import input_pipeline


def load_labels(data_cfg, split: str) -> np.ndarray:
  """Integer labels [N] of a split, in the order of `input_pipeline.get_source`.

  Args:
    data_cfg: config.data.
    split: 'train' or 'eval'.

  Raises:
    ValueError: the source has no labels (image folders).
    input_pipeline.DataNotFoundError: the label file or dataset is missing.
  """
  split_name = data_cfg.train_split if split == 'train' else data_cfg.eval_split
  if data_cfg.source == 'idx':
    if split_name not in input_pipeline.IDX_FILES:
      raise ValueError(f'IDX split {split_name!r}: choose one of '
                       f'{sorted(input_pipeline.IDX_FILES)}.')
    path = os.path.join(input_pipeline.data_folder(data_cfg, 'idx_dir'),
                        input_pipeline.IDX_FILES[split_name][1])
    try:
      labels = input_pipeline.read_idx(path)
    except input_pipeline.DataNotFoundError:
      raise input_pipeline.DataNotFoundError(
          f'IDX label file {path}[.gz] not found next to the images; classifier '
          'FID needs the labels to train its feature network. Copy the '
          '*-labels-idx1-ubyte files into config.data.idx_dir.') from None
    return labels.astype(np.int32)
  if data_cfg.source == 'tfds':
    source = input_pipeline._tfds_data_source(  # pylint: disable=protected-access
        data_cfg.name, split_name, input_pipeline.data_folder(data_cfg, 'tfds_data_dir'))
    if len(source) and 'label' not in source[0]:
      raise ValueError(f'tfds dataset {data_cfg.name!r} has no label feature; '
                       'classifier FID needs class labels.')
    return np.asarray([int(source[i]['label']) for i in range(len(source))], np.int32)
  raise ValueError(
      f'config.data.source={data_cfg.source!r} has no class labels, so no '
      'classifier can be trained for classifier FID; pass '
      '--config.evaluation.classifier_fid=false (Inception FID with '
      'config.evaluation.inception_weights needs no labels).')
