"""Ray Train's torch backend, with a loopback-only rendezvous when every worker is on one machine.

Ray Train's ``TorchConfig`` joins the workers through ``env://``: rank 0 starts a TCPStore server, and
torch's server binds **all interfaces** (``::``), whatever ``MASTER_ADDR`` says — a port open to the
network on a laptop or a CI machine for the whole run (measured: ``ray::RayTrainWorker`` on ``::``,
tests/infra/test_stack_e2e.py). When all workers share one node there is no need for a network at
all: ``LocalRendezvousTorchConfig`` joins them through a ``file://`` store in a private temp dir, and
pins gloo's own sockets to the loopback interface (``GLOO_SOCKET_IFNAME``). Workers on several
nodes (a cluster) get Ray's own ``env://`` rendezvous unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def loopback_interface() -> str | None:
    """Name of the network interface holding 127.0.0.1 (``lo`` on Linux, ``lo0`` on macOS), if any."""
    import socket

    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addrs):
            return name
    return None


def _use_loopback_gloo() -> None:
    iface = loopback_interface()
    if iface and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = iface


def _make_store_dir() -> str:
    return tempfile.mkdtemp(prefix="grain-pg-")


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _LocalRendezvousBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        backend = backend_config.backend or "gloo"
        if backend != "gloo" or len(set(worker_group.execute(_node_id))) != 1:
            return super().on_start(worker_group, backend_config)
        from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup

        # One node: a fresh store file per (re)start of the group, in a private (0700) dir on that node.
        self._store_dir = worker_group.execute_single(0, _make_store_dir)
        url = f"file://{os.path.join(self._store_dir, 'store-' + uuid.uuid4().hex)}"
        worker_group.execute(_use_loopback_gloo)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        import ray

        ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend, world_rank=i,
                                                   world_size=len(worker_group), init_method=url,
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config) -> None:
        super().on_shutdown(worker_group, backend_config)
        store_dir = getattr(self, "_store_dir", None)
        if store_dir:
            try:
                worker_group.execute_single(0, _remove, store_dir)
            except Exception:  # noqa: BLE001 - the worker may be gone (a failed group); a temp dir remains
                pass


class LocalRendezvousTorchConfig(TorchConfig):
    """``TorchConfig`` whose single-node gloo groups rendezvous through a file, not a TCP server."""

    @property
    def backend_cls(self):
        return _LocalRendezvousBackend
