"""NetAdapt's per-layer latency lookup table: every layer timed alone on the target at a grid of kept fractions."""
from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.errors import AutopruneError
from autoprune.measure.metrics import measure_latency
from autoprune.measure.spec import LatencySpec
from autoprune.measure.structure import Channels, LayerInfo, StructureModel


def _standalone(layer: LayerInfo, fin: float, fout: float) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh layer shaped like ``layer`` with the given kept fractions, and its input shape (no batch)."""
    def kept(n: int, f: float, multiple: int = 1) -> int:
        return max(multiple, round(n * f / multiple) * multiple)

    if layer.kind == "linear":
        cin, cout = kept(layer.in_channels, fin), kept(layer.out_channels, fout)
        return nn.Linear(cin, cout), (*layer.input_hw, cin)
    if layer.depthwise:
        c = kept(layer.out_channels, fout)
        cin, cout, groups = c, c, c
    else:
        groups = layer.conv_groups
        cin, cout = kept(layer.in_channels, fin, groups), kept(layer.out_channels, fout, groups)
    conv_type = nn.Conv1d if len(layer.kernel) == 1 else nn.Conv2d
    padding: Any = layer.padding if layer.padding else "same"
    module = conv_type(cin, cout, layer.kernel, layer.stride, padding, layer.dilation, groups)  # type: ignore[arg-type]
    return module, (cin, *layer.input_hw)


def _median_ms(module: nn.Module, input_shape: tuple[int, ...], spec: LatencySpec, repeats: int) -> float:
    return measure_latency({"m": module}, input_shape, batch_size=spec.batch_size, threads=spec.threads,
                           device=spec.device, warmup=3, repeats=repeats)["m"].median_ms


@dataclass
class LatencyTable:
    """NetAdapt's per-layer lookup table: every layer's latency at a grid of kept input/output fractions."""

    fractions: list[float]
    entries: dict[str, list[list[float]]]          # layer -> [input fraction index][output fraction index] ms
    spec: dict[str, Any] = field(default_factory=dict)
    built_on: str = ""

    def lookup(self, layer: str, fin: float, fout: float) -> float:
        """Bilinear interpolation over the grid (clamped to its ends)."""
        grid = self.entries[layer]
        (i0, i1, ti), (j0, j1, tj) = self._bracket(fin), self._bracket(fout)
        top = grid[i0][j0] * (1 - tj) + grid[i0][j1] * tj
        bottom = grid[i1][j0] * (1 - tj) + grid[i1][j1] * tj
        return top * (1 - ti) + bottom * ti

    def _bracket(self, f: float) -> tuple[int, int, float]:
        fr = self.fractions
        if f <= fr[0]:
            return 0, 0, 0.0
        for k in range(len(fr) - 1):
            if f <= fr[k + 1]:
                return k, k + 1, (f - fr[k]) / (fr[k + 1] - fr[k])
        return len(fr) - 1, len(fr) - 1, 0.0

    def total(self, structure: StructureModel, channels: Channels) -> float:
        """The sum of the per-layer latencies of a structure (NetAdapt's estimate)."""
        missing = [layer.name for layer in structure.layers if layer.name not in self.entries]
        if missing:
            raise AutopruneError(f"latency table has no entry for layer '{missing[0]}': rebuild it for this model")
        return sum(self.lookup(layer.name, fin, fout) for layer, fin, fout in structure.fractions(channels))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        p = Path(path)
        if not p.is_file():
            raise AutopruneError(f"config key 'latency.table': file '{p}' does not exist "
                                 f"(build it with 'autoprune latency-table CONFIG --out {p}')")
        try:
            d = json.loads(p.read_text())
            return cls(list(d["fractions"]), dict(d["entries"]), dict(d.get("spec", {})), str(d.get("built_on", "")))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise AutopruneError(f"config key 'latency.table': '{p}' is not a latency table: {e}") from None


def build_table(structure: StructureModel, spec: LatencySpec, fractions: list[float], repeats: int = 15) -> LatencyTable:
    """Time every layer alone at every (input, output) fraction pair; identical layer shapes are timed once."""
    if spec.runtime != "torch":
        raise AutopruneError(f"the latency table times eager torch layers; latency.runtime is {spec.runtime}: "
                             f"set latency.runtime: torch to build one")
    fractions = sorted(set(round(f, 4) for f in fractions) | {1.0})
    timed: dict[tuple[Any, ...], float] = {}
    entries: dict[str, list[list[float]]] = {}
    for layer in structure.layers:
        grid = []
        for fin in fractions:
            row = []
            for fout in fractions:
                f_in = fout if layer.depthwise else (fin if layer.in_groups else 1.0)
                f_out = fout if layer.out_group else 1.0
                key = layer.config(f_in, f_out)
                if key not in timed:
                    module, shape = _standalone(layer, f_in, f_out)
                    timed[key] = _median_ms(module, shape, spec, repeats)
                row.append(timed[key])
            grid.append(row)
        entries[layer.name] = grid
    return LatencyTable(fractions, entries, asdict(spec), f"{socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}")
