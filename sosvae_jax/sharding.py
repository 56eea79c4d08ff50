"""Device mesh and shardings for data parallelism over every device."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over all (or the first num_devices) devices, axis 'data'."""
  devices = jax.devices()[:num_devices]
  # Auto: shardings are set at jit boundaries, not carried in array types.
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh) -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(
        f'config.batch_size={global_batch_size} is not divisible by the '
        f'{n} devices of the mesh; choose a multiple of {n}.')


def global_batch(local_batch: np.ndarray, mesh) -> jax.Array:
  """This process's rows -> one global array sharded over the data axis."""
  return jax.make_array_from_process_local_data(data_sharding(mesh), local_batch)
