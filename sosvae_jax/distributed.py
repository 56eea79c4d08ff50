"""Multi-host start-up: `jax.distributed.initialize` from command-line flags.

Every host runs the same command with its own `--process_id`; process 0 also
hosts the coordinator service at `--coordinator_address` (host:port reachable
from all hosts). After initialisation `jax.devices()` lists the devices of all
processes, the mesh of `sharding.make_mesh` spans them, and each process
feeds its own rows of the global batch (`input_pipeline.train_batches` with
`process_index` / `process_count`). On CPU the cross-process collectives go
through gloo (JAX's default; set here explicitly so that an environment
override cannot leave CPU processes without collectives).
"""

from __future__ import annotations

from typing import Sequence

from absl import logging
import jax

# `--coordinator_address=auto`: let JAX detect the cluster (Slurm, Open MPI,
# Cloud TPU), which also supplies the process count and id.
AUTO = 'auto'


class DistributedSetupError(ValueError):
  """Flags that cannot start a multi-process run; the message says the fix."""


def _check_address(address: str) -> None:
  host, sep, port = address.rpartition(':')
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedSetupError(
        f'--coordinator_address={address!r} is not HOST:PORT; give the address '
        'of the machine running process 0 and a free port, e.g. '
        '--coordinator_address=10.0.0.1:1234 (the same on every host).')


def check_flags(coordinator_address: str | None, num_processes: int | None,
                process_id: int | None) -> bool:
  """Validates the three flags; True iff a multi-process start is requested.

  All three unset (None) means a single-process run. `coordinator_address`
  'auto' asks JAX to detect the cluster, and then the other two must be unset
  (the cluster environment provides them).

  Raises:
    DistributedSetupError: flags given only in part, or out of range.
  """
  given = {'--coordinator_address': coordinator_address,
           '--num_processes': num_processes, '--process_id': process_id}
  if all(v is None for v in given.values()):
    return False
  if coordinator_address == AUTO:
    extra = [k for k, v in given.items() if v is not None and k != '--coordinator_address']
    if extra:
      raise DistributedSetupError(
          f'--coordinator_address=auto detects the cluster (Slurm, Open MPI, '
          f'Cloud TPU), which also gives the process count and id; drop '
          f'{" and ".join(extra)}, or give an explicit HOST:PORT address.')
    return True
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise DistributedSetupError(
        f'A multi-process run needs --coordinator_address, --num_processes and '
        f'--process_id together; {", ".join(missing)} missing. Give all three '
        '(process 0 hosts the coordinator), --coordinator_address=auto on '
        'Slurm / Open MPI / Cloud TPU, or none for a single process.')
  _check_address(coordinator_address)
  if num_processes < 1:
    raise DistributedSetupError(
        f'--num_processes={num_processes} must be >= 1: the number of processes '
        '(usually hosts) taking part in the run.')
  if not 0 <= process_id < num_processes:
    raise DistributedSetupError(
        f'--process_id={process_id} must be in [0, {num_processes - 1}] for '
        f'--num_processes={num_processes}; give each host a different id, 0 on '
        'the host of the coordinator.')
  return True


def parse_local_device_ids(values: Sequence[str] | None) -> list[int] | None:
  """--local_device_ids (strings, as absl's list flag gives them) as ints.

  Raises:
    DistributedSetupError: an entry that is not a non-negative integer.
  """
  if not values:
    return None
  bad = [v for v in values if not str(v).strip().isdigit()]
  if bad:
    raise DistributedSetupError(
        f'--local_device_ids={",".join(map(str, values))}: {", ".join(map(repr, bad))} '
        'is not a device number; give the local device indices this process '
        'drives, e.g. --local_device_ids=0,1.')
  return [int(v) for v in values]


def initialize_from_flags(coordinator_address: str | None = None,
                          num_processes: int | None = None,
                          process_id: int | None = None,
                          local_device_ids: Sequence[int] | None = None, *,
                          initialization_timeout: int = 300) -> bool:
  """Joins a multi-process run, or does nothing for a single process.

  Must run before anything touches a JAX device (any jnp computation, even
  `jax.devices()`), i.e. first thing in `main`.

  Args:
    coordinator_address: HOST:PORT of process 0's coordinator service, the
      same on every process; 'auto' for cluster detection; None with the
      other two None for a single-process run.
    num_processes: number of processes in the run.
    process_id: this process's index, 0 .. num_processes - 1.
    local_device_ids: the local devices this process drives (e.g. one process
      per GPU); None for all visible devices.
    initialization_timeout: seconds to wait for every process to join.

  Returns:
    True if jax.distributed was initialised, False for a single process.

  Raises:
    DistributedSetupError: bad or partial flags, JAX already started, or the
      processes could not find each other in time.
  """
  if not check_flags(coordinator_address, num_processes, process_id):
    if local_device_ids is not None:
      # A single process drives every visible device; ignoring the flag
      # would silently run on others than asked.
      raise DistributedSetupError(
          f'--local_device_ids={",".join(map(str, local_device_ids))} applies to a '
          'multi-process run only (with --coordinator_address, --num_processes '
          'and --process_id); for one process choose the devices with '
          'CUDA_VISIBLE_DEVICES (GPU) or drop the flag.')
    return False
  if jax.distributed.is_initialized():
    raise DistributedSetupError(
        'jax.distributed is already initialised in this process; call '
        'initialize_from_flags once, at the start of main.')
  # Cross-process collectives on CPU hosts (a no-op for GPU/TPU backends).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {} if coordinator_address == AUTO else dict(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id)
  if local_device_ids is not None:
    kwargs['local_device_ids'] = list(local_device_ids)
  try:
    jax.distributed.initialize(initialization_timeout=initialization_timeout, **kwargs)
  except (RuntimeError, ValueError) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if 'must be called before' in first:
      hint = ('JAX was already used in this process (a computation or '
              'jax.devices() ran first); initialise before any JAX call.')
    elif coordinator_address == AUTO:
      hint = ('cluster detection found no Slurm, Open MPI or Cloud TPU '
              'environment; pass --coordinator_address=HOST:PORT, '
              '--num_processes and --process_id instead.')
    else:
      hint = (f'check that process 0 runs on the host of {coordinator_address}, '
              f'that the port is free and reachable from every host, and that '
              f'all {num_processes} processes start within '
              f'{initialization_timeout} s with distinct --process_id.')
    raise DistributedSetupError(f'jax.distributed.initialize failed '
                                f'({type(e).__name__}: {first}); {hint}') from e
  logging.info('Process %d of %d: %d local device(s), %d in all.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
