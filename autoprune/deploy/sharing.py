"""Weight sharing (Deep Compression's, without its fine-tuning of the shared values; Core ML calls it palettization).

Each convolution's and linear layer's weights are clustered by k-means (``scipy.cluster.vq.kmeans2``, centroids
initialised evenly between the smallest and largest weight, as Han et al. found best) into ``2**bits`` shared
values; the layer stores its codebook (float32) and one ``bits``-bit index per weight, bit-packed. Everything else
(biases, batch norm) is stored as it is. ``model.shared.npz`` holds it, deflate-compressed by ``numpy.savez_compressed``
(the entropy-coding stage); ``shared_state_dict`` turns it back into a ``state_dict`` for the pruned architecture.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import nn

from autoprune.config import share_bits_problem
from autoprune.errors import AutopruneError

SHARED_FILE = "model.shared.npz"
FORMAT = "autoprune-shared-weights/1"


@dataclass(frozen=True)
class SharedWeights:
    """One model's shared weights in three contiguous buffers and a layout (JSON) that says where each tensor is:
    every layer's codebook in ``codebooks`` (float32), its bit-packed indices in ``indices``, the unshared tensors'
    bytes in ``raw``."""

    bits: int
    layout: list[dict[str, Any]]
    codebooks: np.ndarray
    indices: np.ndarray
    raw: np.ndarray

    @property
    def packed_bytes(self) -> int:
        """Bytes of the three buffers before compression."""
        return self.codebooks.nbytes + self.indices.nbytes + self.raw.nbytes

    def save(self, path: str | Path) -> int:
        """Write ``path`` (``numpy.savez_compressed``); return its size in bytes."""
        with open(path, "wb") as f:
            np.savez_compressed(f, format=np.array(FORMAT), bits=np.array(self.bits),
                                layout=np.array(json.dumps(self.layout)), codebooks=self.codebooks,
                                indices=self.indices, raw=self.raw)
        return Path(path).stat().st_size


def check_bits(bits: int) -> int:
    """``bits`` if it is a supported codebook size, else a one-line error."""
    problem = share_bits_problem(bits)
    if problem:
        raise AutopruneError(f"weight sharing: bits {problem}")
    return bits


def _shared_layers(model: nn.Module) -> set[str]:
    """The state_dict keys of every convolution's and linear layer's weight."""
    return {f"{name}.weight" if name else "weight" for name, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def cluster(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (1-D float) clustered into at most ``2**bits`` centroids: (codebook, index per value)."""
    distinct = np.unique(values)
    if distinct.size <= 2 ** bits:  # already few values: the codebook holds them exactly
        return distinct.astype(np.float32), np.searchsorted(distinct, values).astype(np.int64)
    init = np.linspace(values.min(), values.max(), 2 ** bits)
    with warnings.catch_warnings():  # an empty cluster keeps its initial centroid, which no weight uses
        warnings.simplefilter("ignore")
        codebook, labels = kmeans2(values.astype(np.float64), init, iter=30, minit="matrix", missing="warn")
    return codebook.astype(np.float32), labels.astype(np.int64)


def _pack(indices: np.ndarray, bits: int) -> np.ndarray:
    """``bits`` bits per index, concatenated and padded to whole bytes."""
    as_bits = ((indices[:, None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8)
    return np.packbits(as_bits.reshape(-1))


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    as_bits = np.unpackbits(packed)[: count * bits].reshape(count, bits).astype(np.int64)
    return (as_bits << np.arange(bits - 1, -1, -1)).sum(axis=1)


def share_weights(model: nn.Module, bits: int) -> SharedWeights:
    """Cluster each convolution's and linear layer's weights of ``model`` into ``2**bits`` shared values."""
    check_bits(bits)
    shared = _shared_layers(model)
    layout: list[dict[str, Any]] = []
    codebooks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    raw: list[bytes] = []
    offsets = {"codebooks": 0, "indices": 0, "raw": 0}
    for key, tensor in model.state_dict().items():
        array = tensor.detach().cpu().numpy()
        entry: dict[str, Any] = {"key": key, "shape": list(array.shape), "dtype": str(array.dtype)}
        if key in shared and array.size > 0:
            codebook, labels = cluster(array.reshape(-1).astype(np.float32), bits)
            packed = _pack(labels, bits)
            entry.update(codebook=[offsets["codebooks"], codebook.size], indices=[offsets["indices"], packed.size])
            codebooks.append(codebook)
            indices.append(packed)
            offsets["codebooks"] += codebook.size
            offsets["indices"] += packed.size
        else:
            data = np.ascontiguousarray(array).tobytes()
            entry["raw"] = [offsets["raw"], len(data)]
            raw.append(data)
            offsets["raw"] += len(data)
        layout.append(entry)
    return SharedWeights(bits, layout, np.concatenate(codebooks or [np.zeros(0, np.float32)]).astype(np.float32),
                         np.concatenate(indices or [np.zeros(0, np.uint8)]).astype(np.uint8),
                         np.frombuffer(b"".join(raw), dtype=np.uint8))


def shared_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` stored in a ``model.shared.npz``: every shared weight replaced by its centroid."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != FORMAT:
                raise AutopruneError(f"'{path}' is not an autoprune shared-weights file")
            bits, layout = int(f["bits"]), json.loads(str(f["layout"]))
            codebooks, indices, raw = f["codebooks"], f["indices"], f["raw"]
    except (OSError, ValueError, KeyError) as e:
        raise AutopruneError(f"'{path}' is not a readable shared-weights file: {e}") from None
    state: dict[str, torch.Tensor] = {}
    try:
        for entry in layout:
            shape, dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
            if "raw" in entry:
                start, size = entry["raw"]
                array = np.frombuffer(raw[start:start + size].tobytes(), dtype=dtype).reshape(shape)
            else:
                (c0, cn), (i0, i_n) = entry["codebook"], entry["indices"]
                labels = _unpack(indices[i0:i0 + i_n], bits, int(np.prod(shape)))
                array = codebooks[c0:c0 + cn][labels].astype(dtype).reshape(shape)
            state[entry["key"]] = torch.from_numpy(array.copy())
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise AutopruneError(f"'{path}' is not a readable shared-weights file: {type(e).__name__}: {e}") from None
    return state
