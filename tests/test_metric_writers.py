"""metrics.jsonl survives a torn last line; TensorBoard hides repeated steps."""

import json

import pytest
from tensorboardX.proto import event_pb2
import train_fixtures

from sosvae_jax import metric_writers
from sosvae_jax import workdir as workdir_lib


def _events(workdir):
  """Every Event in the TensorBoard files under workdir."""
  return [e for events in train_fixtures.tensorboard_events(workdir).values() for e in events]


def _scalar_steps(events, tag):
  return [e.step for e in events for v in e.summary.value if v.tag == tag]


def test_torn_last_line_is_dropped_on_resume(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    writer.write(step, {'loss': float(step)})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 4, "split": "tr')  # the process died mid-write
  assert [r['step'] for r in metric_writers.read_metrics(str(tmp_path))] == [1, 2, 3]
  resumed = metric_writers.MetricWriter(str(tmp_path))
  resumed.drop_after(2)
  resumed.write(3, {'loss': 30.0})
  resumed.close()
  records = metric_writers.read_metrics(str(tmp_path))
  assert [(r['step'], r['loss']) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_damage_before_the_last_line_names_the_line(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl, line 2'):
    metric_writers.read_metrics(str(tmp_path))


def test_resume_purges_repeated_steps_in_tensorboard(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path))
  for step in range(1, 6):
    writer.write(step, {'loss': float(step)})
  writer.close()
  resumed = metric_writers.MetricWriter(str(tmp_path))
  resumed.drop_after(3)  # checkpoint at 3: steps 4 and 5 are logged again
  for step in (4, 5):
    resumed.write(step, {'loss': 10.0 * step})
  resumed.close()
  events = _events(str(tmp_path))
  starts = [e.step for e in events if e.HasField('session_log')
            and e.session_log.status == event_pb2.SessionLog.START]
  # TensorBoard drops every earlier event at step >= the START marker's step.
  assert starts == [4]
  steps = _scalar_steps(events, 'train/loss')
  assert steps == [1, 2, 3, 4, 5, 4, 5]
  marker = next(i for i, e in enumerate(events) if e.HasField('session_log'))
  kept = [e.step for e in events[:marker] for v in e.summary.value if e.step < 4]
  assert kept == [1, 2, 3]


def test_fresh_run_writes_no_purge_marker(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path))
  writer.drop_after(0)
  writer.write(1, {'loss': 1.0})
  writer.close()
  assert not any(e.HasField('session_log') for e in _events(str(tmp_path)))


CONFIG = {'likelihood': {'name': 'lowrank_gaussian', 'rank': 25, 'trunk': [8, 16]},
          'seed': 0, 'data': {'tfds_data_dir': None}}


def test_run_summary_has_results_and_hparams(tmp_path):
  workdir_lib.record_launch(str(tmp_path), json.dumps(CONFIG), 0)
  metric_writers.write_run_summary(
      str(tmp_path), 100,
      {'elbo': -3.5, 'structure': {'participation_ratio': 2.0}, 'spectrum': [1.0, 2.0],
       'bad': float('nan')})
  events = _events(str(tmp_path))
  tags = {v.tag for e in events for v in e.summary.value}
  assert {'eval/elbo', 'eval/structure/participation_ratio'} <= tags
  assert not any('bad' in t or 'spectrum' in t for t in tags)
  # The run's row of the HPARAMS tab: config.json's leaves, the results as metrics.
  (row,) = train_fixtures.hparams_rows(str(tmp_path)).values()
  assert row['hparams'] == {'likelihood.name': 'lowrank_gaussian', 'likelihood.rank': 25,
                            'likelihood.trunk': '[8, 16]', 'seed': 0,
                            'data.tfds_data_dir': 'None'}
  assert row['metrics']['eval/elbo'] == (100, -3.5) and not row['experiment']
  assert json.loads(json.dumps(metric_writers.flat_scalars({'a': {'b': 1}}))) == {'a/b': 1.0}


def test_run_summaries_in_one_second_are_all_kept(tmp_path):
  # Two evaluations of one workdir (prior, then mixture) can finish within the
  # second that names an event file; neither may overwrite the other.
  workdir_lib.record_launch(str(tmp_path), json.dumps(CONFIG), 0)
  for sampler in ('prior', 'gmm'):
    metric_writers.write_run_summary(str(tmp_path), 7, {sampler: {'elbo': -1.0}})
  rows = train_fixtures.hparams_rows(str(tmp_path))
  assert list(rows) == ['.']  # both in the run's one row
  assert {'eval/prior/elbo', 'eval/gmm/elbo'} <= set(rows['.']['metrics'])


def test_training_and_evaluation_share_the_runs_one_hparams_row(tmp_path):
  workdir_lib.record_launch(str(tmp_path), json.dumps(CONFIG), 0)
  writer = metric_writers.MetricWriter(str(tmp_path))
  writer.drop_after(0)
  writer.write_hparams()
  writer.write(3, {'elbo': -5.0}, split='eval')
  writer.close()
  # A resumed launch that changes a field: config.json, and so the row, keep
  # the first launch's value (TensorBoard shows a folder's first session start).
  workdir_lib.record_launch(str(tmp_path), json.dumps({**CONFIG, 'seed': 1}), 3)
  resumed = metric_writers.MetricWriter(str(tmp_path))
  resumed.drop_after(3)
  resumed.write_hparams()
  resumed.write(6, {'elbo': -4.0}, split='eval')
  resumed.close()
  metric_writers.write_run_summary(str(tmp_path), 6, {'prior': {'elbo': -4.5}})
  rows = train_fixtures.hparams_rows(str(tmp_path))
  assert list(rows) == ['.'] and not rows['.']['experiment']
  row = rows['.']
  assert len(row['starts']) == 3 and all(s == row['hparams'] for s in row['starts'])
  assert row['hparams']['seed'] == 0
  assert row['metrics']['eval/elbo'] == (6, -4.0)
  assert row['metrics']['eval/prior/elbo'] == (6, -4.5)
