"""metrics.jsonl survives a torn last line; TensorBoard hides repeated steps."""

import glob
import json
import os
import struct

import pytest
from tensorboardX.proto import event_pb2

from sosvae_jax import metric_writers


def _events(workdir):
  """Every Event in the TensorBoard files under workdir (TFRecord framing)."""
  events = []
  for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', '**', 'events.*'),
                              recursive=True)):
    with open(path, 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      pos += 12  # length + its crc
      events.append(event_pb2.Event.FromString(data[pos:pos + length]))
      pos += length + 4  # payload + its crc
  return events


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


def test_run_summary_has_results_and_hparams(tmp_path):
  metric_writers.write_run_summary(
      str(tmp_path), 100, {'likelihood.name': 'lowrank_gaussian', 'likelihood.rank': 25},
      {'elbo': -3.5, 'structure': {'participation_ratio': 2.0}, 'spectrum': [1.0, 2.0],
       'bad': float('nan')})
  events = _events(str(tmp_path))
  tags = {v.tag for e in events for v in e.summary.value}
  assert {'eval/elbo', 'eval/structure/participation_ratio'} <= tags
  assert not any('bad' in t or 'spectrum' in t for t in tags)
  # The hparams plugin's session-start summary carries the config values.
  plugin = [v for e in events for v in e.summary.value
            if v.metadata.plugin_data.plugin_name == 'hparams']
  assert plugin and b'lowrank_gaussian' in b''.join(
      v.metadata.plugin_data.content for v in plugin)
  assert json.loads(json.dumps(metric_writers.flat_scalars({'a': {'b': 1}}))) == {'a/b': 1.0}


def test_run_summaries_in_one_second_are_all_kept(tmp_path):
  # Two evaluations of one workdir (prior, then mixture) can finish within the
  # second that names an event file; neither may overwrite the other.
  for sampler in ('prior', 'gmm'):
    metric_writers.write_run_summary(str(tmp_path), 7, {'likelihood.name': sampler},
                                     {sampler: {'elbo': -1.0}})
  events = _events(str(tmp_path))
  tags = {v.tag for e in events for v in e.summary.value}
  assert {'eval/prior/elbo', 'eval/gmm/elbo'} <= tags
  contents = b''.join(v.metadata.plugin_data.content for e in events for v in e.summary.value
                      if v.metadata.plugin_data.plugin_name == 'hparams')
  assert b'prior' in contents and b'gmm' in contents
