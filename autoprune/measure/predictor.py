"""Latency predicted for every structure, fitted on the structures a run measured.

Eager and onnxruntime latency at batch 1 is a fixed cost per operator plus compute that grows with the MACs, at a
rate that differs by layer shape (a 32x32 layer runs at other MACs per second than an 8x8 one). So a structure's
latency is modelled as ``c0 + sum_b c_b * MACs_b``: ``MACs_b`` the multiply-accumulates the structure keeps in the
layers of bucket ``b`` (layers of one kind at one input resolution), ``c0`` the fixed cost, with a lookup table's
per-layer sum (``autoprune latency-table``) as one more feature when there is one. The coefficients are fitted by
non-negative least squares (scipy's ``nnls``: no bucket runs faster for more MACs) on every structure measured so far.
With fewer measured structures than coefficients + 2, the model is a line through the total MACs (proportional
below 3 structures).
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoprune.measure.latency_table import LatencyTable
    from autoprune.measure.structure import StructureModel

Channels = Mapping[str, int]
Observation = tuple[Channels, float]  # a structure and its measured latency (ms)


class LatencyModel:
    """``predict(channels)``: a structure's latency (ms) from the MACs it keeps per layer bucket (see module)."""

    def __init__(self, structure: StructureModel, table: LatencyTable | None = None) -> None:
        self.structure, self.table = structure, table
        buckets: dict[tuple[str, tuple[int, ...]], int] = {}
        for layer in structure.layers:
            buckets.setdefault((layer.kind, layer.input_hw), len(buckets))
        self._bucket = [buckets[(layer.kind, layer.input_hw)] for layer in structure.layers]
        self._width = 1 + len(buckets) + (table is not None)
        self._coef: list[float] | None = None  # the NNLS fit
        self._line: tuple[float, float] = (0.0, 0.0)  # a + b * total MACs, while too few structures are measured

    @property
    def fitted_on(self) -> str:
        """What the current fit is: per-bucket NNLS or the line through total MACs."""
        return "per-layer-bucket MACs (NNLS)" if self._coef is not None else "total MACs (line)"

    def features(self, channels: Channels) -> list[float]:
        """``[1, MACs of bucket 0, ..., (table total)]`` of a structure, MACs in millions."""
        row = [1.0] + [0.0] * (self._width - 1)
        for (layer, fin, fout), bucket in zip(self.structure.fractions(channels), self._bucket):
            row[1 + bucket] += layer.macs * fout * (1.0 if layer.depthwise else fin) / 1e6
        if self.table is not None:
            row[-1] = self.table.total(self.structure, channels)
        return row

    def fit(self, observations: Sequence[Observation]) -> None:
        """Fit on measured structures (the base first)."""
        import numpy as np
        from scipy.optimize import nnls

        self._line = _fit_line([(self.structure.macs(c), ms) for c, ms in observations]) if observations else (0.0, 0.0)
        self._coef = None
        if len(observations) >= self._width + 2:
            x = np.array([self.features(c) for c, _ in observations])
            y = np.array([ms for _, ms in observations])
            scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # columns of one size, so NNLS weighs them alike
            coef, _ = nnls(x / scale, y)
            self._coef = [float(v) for v in coef / scale]

    def predict(self, channels: Channels) -> float:
        """The predicted latency (ms) of a structure."""
        if self._coef is None:
            a, b = self._line
            return a + b * self.structure.macs(channels)
        return float(sum(c * f for c, f in zip(self._coef, self.features(channels))))


def loo_errors(structure: StructureModel, table: LatencyTable | None,
               observations: Sequence[Observation]) -> list[float]:
    """Leave-one-out relative errors: each measured structure (but the first, the base) predicted by a model fitted on
    all the others."""
    errors = []
    for i in range(1, len(observations)):
        model = LatencyModel(structure, table)
        model.fit([o for j, o in enumerate(observations) if j != i])
        channels, ms = observations[i]
        errors.append(abs(model.predict(channels) - ms) / ms)
    return errors


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; through the origin and the first point when there are too few points
    or the fit would make latency fall as the feature grows."""
    x0, y0 = points[0]
    proportional = (0.0, y0 / x0 if x0 > 0 else 0.0)
    if len(points) < 3:
        return proportional
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return proportional
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    return (a, b) if b > 0 else proportional
