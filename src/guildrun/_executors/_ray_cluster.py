"""Reaching a Ray cluster, and a small one on this machine's loopback (tests, benchmarks).

Facts checked on Ray 2.60 (issue 15), which this module turns into code:

- A wrong or missing `RAY_AUTH_TOKEN` makes `ray.init` fail after about 20 s with a bare
  `ConnectionError`; the cause is only in Ray's logs. One key-value read through Ray's
  GCS client fails in well under a second with `AuthenticationError` instead, so the
  driver asks that first and says what is wrong.
- Passing 127.0.0.1 is not enough to keep a cluster on loopback: Ray rewrites a node's
  address to the machine's outward one unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`;
  the dashboard probes cloud metadata and reports usage unless usage stats are off and
  HTTP(S) proxies point at a closed loopback port; `RAY_TMPDIR` keeps its files in a
  folder of ours. `LoopbackCluster` sets all of that for the processes it starts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from .._errors import UsageError

_PROBE_TIMEOUT = 10  # seconds for one key-value read from the head


def _resolve(address: str) -> str:
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return str(canonicalize_bootstrap_address_or_die("auto"))
    except ConnectionError:
        raise UsageError(
            "no Ray cluster found on this machine (--address auto): start one with "
            "`ray start --head`, or give --address HOST:PORT"
        ) from None


def check_reachable(address: str) -> None:
    """Raise a one-line UsageError when the head at `address` is not there or refuses
    our token; return quietly when a read succeeds (or the probe itself is unavailable)."""
    import ray

    where = _resolve(address)
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and not _has_token():
        # Ray's native client aborts the process on a missing token: say it first.
        raise UsageError(auth_message(where))
    _listening(where)
    import ray._raylet

    client = getattr(ray._raylet, "GcsClient", None)
    if client is None:  # a Ray without it: ray.init's own error is all there is
        return
    try:
        with _quiet_stderr():  # Ray's C++ client logs its failure there as well
            client(address=where).internal_kv_get(b"guildrun-probe", None, timeout=_PROBE_TIMEOUT)
    except ray.exceptions.AuthenticationError:
        raise UsageError(auth_message(where)) from None
    except Exception as exc:
        raise UsageError(f"cannot reach the Ray cluster at {where}: {_first_line(exc)}") from None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (native code writes there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _listening(where: str) -> None:
    """A plain TCP connect first: Ray's own client retries an address where nothing
    listens for about 40 s before it says so."""
    host, _, port = where.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            return
    except ValueError:
        raise UsageError(f"--address {where}: expected HOST:PORT") from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot reach the Ray cluster at {where}: {why}") from None


def _has_token() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    try:
        return bool(Path(path).read_text().strip())
    except OSError:
        return False


def auth_message(where: str) -> str:
    given = os.environ.get("RAY_AUTH_TOKEN")
    token = "RAY_AUTH_TOKEN is not set" if not given else "the RAY_AUTH_TOKEN given is not its"
    return (
        f"the Ray cluster at {where} refused guildrun's auth token ({token}): set "
        "RAY_AUTH_MODE=token and the cluster's RAY_AUTH_TOKEN in guildrun's environment"
    )


def refused(address: str, exc: BaseException) -> UsageError:
    """`ray.init`'s bare ConnectionError, with its likely cause."""
    hint = ""
    if os.environ.get("RAY_AUTH_MODE") != "token" or not os.environ.get("RAY_AUTH_TOKEN"):
        hint = " (a cluster with token auth needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)"
    return UsageError(f"cannot join the Ray cluster at {address}: {_first_line(exc)}{hint}")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------- loopback cluster


def loopback_env(tmp: Path, token: str) -> dict[str, str]:
    """The environment that keeps a Ray cluster (and its drivers) on 127.0.0.1, with
    token auth on."""
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_USAGE_STATS_REPORT_URL": f"{closed}/usage",
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "http_proxy": closed,
        "https_proxy": closed,
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
        "RAY_TMPDIR": str(tmp),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }


class LoopbackCluster:
    """A Ray cluster of `nodes` nodes in this machine's processes, on loopback only.

    The environment it needs is set in `os.environ` while it lives (Ray's processes and
    any driver inherit it) and put back by `shutdown`.
    """

    def __init__(self, nodes: int = 2, num_cpus: int = 1, tmp: Path | None = None) -> None:
        from ray.cluster_utils import Cluster

        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="guildrun-ray-cluster-"))
        self.token = secrets.token_hex(16)
        self.env = loopback_env(self.tmp, self.token)
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        _reload_auth()
        started = time.perf_counter()
        try:
            self.cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "node_ip_address": "127.0.0.1",
                    "num_cpus": num_cpus,
                    "include_dashboard": False,
                    "resources": {"node0": 1},
                    # A node that stops answering is declared dead in about 5 s (Ray's
                    # default takes 12-13 s), so tests that kill one wait less.
                    "_system_config": {
                        "health_check_period_ms": 1000,
                        "health_check_failure_threshold": 5,
                    },
                },
            )
            self.nodes = [self.cluster.head_node]
            for i in range(1, nodes):
                self.add_node(num_cpus, {f"node{i}": 1})
            self.cluster.wait_for_nodes()
        except BaseException:
            self._restore()
            raise
        self.start_seconds = time.perf_counter() - started

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_node(self, num_cpus: int = 1, resources: Mapping[str, float] | None = None) -> Any:
        node = self.cluster.add_node(
            node_ip_address="127.0.0.1", num_cpus=num_cpus, resources=dict(resources or {})
        )
        self.nodes.append(node)
        return node

    def remove_node(self, node: Any) -> None:
        """The node dies at once, as a machine that lost power (no graceful stop)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.nodes.remove(node)

    def wait_dead(self, node: Any, timeout: float = 60) -> bool:
        """Until the cluster has declared `node` dead (True), or `timeout` passed."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}  # type: ignore[no-untyped-call]
            if node.node_id not in alive:
                return True
            time.sleep(0.2)
        return False

    def processes(self) -> list[psutil.Process]:
        """Every live process of the cluster (its daemons and workers), found by the
        RAY_TMPDIR they inherited."""
        want = str(self.tmp)
        found = []
        for proc in psutil.process_iter(["pid", "environ"]):
            with contextlib.suppress(psutil.Error):
                env = proc.info["environ"] or {}
                if env.get("RAY_TMPDIR") == want and proc.pid != os.getpid():
                    found.append(proc)
        return found

    def outward_sockets(self) -> list[str]:
        """Sockets of the cluster's processes bound or connected to anything but loopback."""
        bad: list[str] = []
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                for conn in proc.net_connections(kind="inet"):
                    for addr in (conn.laddr, conn.raddr):
                        if addr and not _loopback(addr.ip):
                            bad.append(f"pid {proc.pid} {proc.name()}: {conn}")
        return bad

    def shutdown(self) -> None:
        import ray

        try:
            if ray.is_initialized():
                ray.shutdown()
            self.cluster.shutdown()  # type: ignore[no-untyped-call]
        finally:
            self._restore()

    def _restore(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_auth()

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _loopback(ip: str) -> bool:
    with contextlib.suppress(ValueError):
        addr = ipaddress.ip_address(ip.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr.is_loopback
    return False


def _reload_auth() -> None:
    """Ray reads its auth mode and token, and whether to rewrite 127.0.0.1, once at
    import: read them again."""
    with contextlib.suppress(Exception):
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ.get(
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1"
        ).lower() not in ("0", "false")
    with contextlib.suppress(Exception):
        import ray._raylet as raylet

        raylet.Config.initialize("")  # type: ignore[attr-defined]
        raylet.AuthenticationTokenLoader.instance().reset_cache()  # type: ignore[attr-defined]
