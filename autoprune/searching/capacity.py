"""What the Ray cluster can give a search, checked before anything waits on it.

Ray Tune waits for ever for resources no node has (``resources.gpu: 0.5`` on a CPU-only cluster). So before any
trial starts, the trial's request is matched against the live nodes and against the node types an autoscaler may
still add (Ray's published cluster config, as Ray Train checks it); a request nothing can ever satisfy is a
one-line error naming the config key.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.config import SearchConfig
from autoprune.errors import AutopruneError

Resources = dict[str, float]
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # written on the head by `ray up`
LATENCY_NODE_WAIT_S = 900.0  # how long a search waits for an autoscaler to add the node that times on CUDA
NODE_JOIN_WAIT_S = 180.0  # how long a search on a running cluster waits for nodes to join before refusing


@dataclass(frozen=True)
class ClusterShape:
    """The live nodes (each ``{"NodeID", "Resources", "head"}``), the per-node resources of node types an autoscaler
    may add, and whether an autoscaler runs without publishing what it can add (then anything may come)."""

    nodes: tuple[dict[str, Any], ...]
    scalable: tuple[Resources, ...] = ()
    autoscaler_unknown: bool = False

    @classmethod
    def current(cls) -> "ClusterShape":
        """The connected Ray cluster's shape."""
        import ray

        nodes = tuple({"NodeID": n["NodeID"], "Resources": dict(n.get("Resources", {})),
                       "head": "node:__internal_head__" in n.get("Resources", {})}
                      for n in ray.nodes() if n.get("Alive"))
        scalable: list[Resources] = []
        unknown = False
        config = _autoscaler_config()
        if config is not None:
            scalable = [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]
        else:
            launcher = launcher_node_types(Path(BOOTSTRAP_CONFIG).expanduser())
            if launcher is not None:
                scalable, unknown = launcher
        return cls(nodes, tuple(scalable), unknown)

    def fits(self, request: Resources) -> tuple[bool, bool]:
        """Whether a live node can host ``request`` now, and whether an autoscaler may add one that can."""
        now = any(_fits(n["Resources"], request) for n in self.nodes)
        later = self.autoscaler_unknown or any(_fits(r, request) for r in self.scalable)
        return now, later

    def most(self, resource: str) -> float:
        """The most of ``resource`` one node has or may get."""
        return max([n["Resources"].get(resource, 0.0) for n in self.nodes] + [r.get(resource, 0.0) for r in
                                                                              self.scalable], default=0.0)


def _fits(node: Resources, request: Resources) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in request.items() if v > 0)


def _autoscaler_config() -> Any:
    from ray._private.state import state

    try:
        return state.get_cluster_config()
    except Exception:  # noqa: BLE001  (an older GCS without the call: no autoscaler config to read)
        return None


def launcher_node_types(path: Path) -> tuple[list[Resources], bool] | None:
    """The node types a Ray cluster launcher (``ray up``) autoscaler may add, from the config it leaves on the head
    (``available_node_types``, resources filled in by ``ray up``), and whether some type's resources are not
    stated (then it may add anything); None without that file. A local instance's monitor adds nothing."""
    import yaml

    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return [], True
    types, default_max = doc.get("available_node_types") or {}, doc.get("max_workers", 1)
    scalable: list[Resources] = []
    unknown = not types
    for node_type in types.values():
        if not isinstance(node_type, dict) or node_type.get("max_workers", default_max) == 0:
            continue
        resources = node_type.get("resources") or {}
        if resources:
            scalable.append({str(k): float(v) for k, v in resources.items()})
        else:
            unknown = True
    return scalable, unknown


def latency_threads(config: SearchConfig) -> int:
    """The threads candidates are timed (and trials run) with: ``latency.threads``, else ``resources.cpu``."""
    return int(config["latency.threads"] or max(1, int(config["resources.cpu"])))


def latency_device(config: SearchConfig) -> str:
    """Where candidates are timed: ``latency.device``; ``auto`` is CUDA when trials train on GPUs and no
    ``latency.target`` names the device to time on (a CPU box or an edge device: its CPU)."""
    device = str(config["latency.device"])
    if device == "auto":
        torch_on_gpu = config["resources.gpu"] > 0 and config["latency.runtime"] == "torch"
        return "cuda" if torch_on_gpu and not config["latency.target"] else "cpu"
    return device


def check_capacity(config: SearchConfig, shape: ClusterShape) -> list[str]:
    """Refuse what the cluster can never give; return notes on what only an autoscaler can give."""
    cpu, gpu = float(config["resources.cpu"]), float(config["resources.gpu"])
    trial: Resources = {"CPU": cpu, "GPU": gpu}
    notes = []
    now, later = shape.fits(trial)
    if not now and not later:
        most_gpu = shape.most("GPU")
        if gpu > 0 and most_gpu == 0:
            raise AutopruneError(f"config key 'resources.gpu': each trial asks for {gpu:g} GPU, but no node of the Ray "
                                 f"cluster has a GPU: set resources.gpu: 0 to train on CPUs, or add GPU nodes")
        if gpu > most_gpu:
            raise AutopruneError(f"config key 'resources.gpu': each trial asks for {gpu:g} GPU, but no node of the Ray "
                                 f"cluster has more than {most_gpu:g}")
        raise AutopruneError(f"config key 'resources.cpu': each trial asks for {cpu:g} CPUs"
                             + (f" beside {gpu:g} GPU" if gpu > 0 else "")
                             + f", but no node of the Ray cluster has that many (at most {shape.most('CPU'):g})")
    if not now:
        notes.append(f"no node can run a trial yet ({cpu:g} CPU" + (f", {gpu:g} GPU" if gpu > 0 else "")
                     + "): the autoscaler adds one")
    if latency_device(config) == "cuda":
        target = config["latency.target"]
        need: Resources = {"GPU": 1e-4, **({target: 1e-4} if target else {})}
        now, later = shape.fits(need)
        if not now and not later:
            why = " (auto: trials train on GPUs)" if config["latency.device"] == "auto" else ""
            where = f"the node advertising '{target}' has no GPU" if target else "no node of the Ray cluster has a GPU"
            raise AutopruneError(f"config key 'latency.device': candidates are timed on CUDA{why}, but {where}: set "
                                 f"latency.device: cpu")
        if not now:
            notes.append("no node with a GPU is up yet to time candidates on: the autoscaler is asked for one")
    return notes


def await_capacity(config: SearchConfig, echo: Callable[[str], None], wait_s: float,
                   shape_now: Callable[[], ClusterShape] = ClusterShape.current, poll_s: float = 5.0) -> list[str]:
    """``check_capacity``, giving nodes that are still joining ``wait_s`` seconds (a cluster's workers may start after
    its driver: a KubeRay job); 0 for the local instance a search starts itself, where none will join."""
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            return check_capacity(config, shape_now())
        except AutopruneError:
            if time.monotonic() >= deadline:
                raise
            if not told:
                echo(f"no node of the Ray cluster can run a trial yet: waiting up to {wait_s:g} s for nodes to join")
                told = True
            time.sleep(poll_s)


def latency_node(shape: ClusterShape) -> str | None:
    """The node the latency actor must run on when it times on CUDA and no ``latency.target`` names one: the head
    when it has a GPU, else the first live GPU node (None: none is up)."""
    gpu_nodes = [n for n in shape.nodes if n["Resources"].get("GPU", 0) > 0]
    gpu_nodes.sort(key=lambda n: not n["head"])
    return str(gpu_nodes[0]["NodeID"]) if gpu_nodes else None


def _request_gpu_node() -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}])


def release_gpu_node() -> None:
    """Withdraw ``wait_for_gpu_node``'s request (it stands until replaced): the autoscaler may remove the node."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])


def wait_for_gpu_node(config: SearchConfig, echo: Callable[[str], None],
                      shape_now: Callable[[], ClusterShape] = ClusterShape.current,
                      request: Callable[[], None] = _request_gpu_node,
                      timeout_s: float = LATENCY_NODE_WAIT_S, poll_s: float = 10.0) -> tuple[str, bool]:
    """The node to time on CUDA (``latency_node``) and whether the autoscaler was asked for it: when none is up, it
    is asked for one (``request``: Ray's ``request_resources``, standing for the whole search, so that the node
    timing candidates is not scaled away; ``release_gpu_node`` withdraws it) and awaited. Gives up after
    ``timeout_s`` with an error naming ``latency.device``."""
    node = latency_node(shape_now())
    if node is not None:
        return node, False
    request()
    start = last = time.monotonic()
    while True:
        time.sleep(poll_s)
        node = latency_node(shape_now())
        if node is not None:
            return node, True
        if time.monotonic() - start >= timeout_s:
            raise AutopruneError(f"config key 'latency.device': no node with a GPU joined the Ray cluster within "
                                 f"{timeout_s:g} s to time candidates on CUDA: set latency.device: cpu, or start a "
                                 f"GPU node")
        if time.monotonic() - last >= 60:
            echo(f"waiting for a GPU node to time candidates on ({time.monotonic() - start:.0f} s)")
            last = time.monotonic()
