"""Weight sharing (Deep Compression's trained quantization; Core ML calls it palettization).

Each convolution's and linear layer's weights are clustered by k-means (``scipy.cluster.vq.kmeans2``, centroids
initialised evenly between the smallest and largest weight, as Han et al. found best) into ``2**bits`` shared
values; the layer stores its codebook (float32) and one ``bits``-bit index per weight, bit-packed. Everything else
(biases, batch norm) stays float32. ``model.shared.npz`` holds it, deflate-compressed by ``numpy.savez_compressed``
(the entropy-coding stage); ``shared_state_dict`` turns it back into a ``state_dict`` for the pruned architecture.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import nn

from autoprune.config import SHARE_BITS
from autoprune.errors import AutopruneError

SHARED_FILE = "model.shared.npz"
FORMAT = "autoprune-shared-weights/1"


@dataclass(frozen=True)
class SharedWeights:
    """Per-layer codebooks and packed indices, and the unshared tensors, of one model."""

    bits: int
    arrays: dict[str, np.ndarray]

    @property
    def packed_bytes(self) -> int:
        """Bytes of the arrays before compression: codebooks, packed indices and the float32 remainder."""
        return sum(a.nbytes for k, a in self.arrays.items() if not k.startswith("shape/"))

    def save(self, path: str | Path) -> int:
        """Write ``path`` (``numpy.savez_compressed``); return its size in bytes."""
        with open(path, "wb") as f:
            arrays: dict[str, Any] = {"format": np.array(FORMAT), "bits": np.array(self.bits), **self.arrays}
            np.savez_compressed(f, **arrays)
        return Path(path).stat().st_size


def check_bits(bits: int) -> int:
    """``bits`` if it is a supported codebook size, else a one-line error."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SHARE_BITS:
        raise AutopruneError(f"weight sharing takes {SHARE_BITS.start} to {SHARE_BITS.stop - 1} bits per weight, "
                             f"got {bits!r}")
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
    arrays: dict[str, np.ndarray] = {}
    for key, tensor in model.state_dict().items():
        array = tensor.detach().cpu().numpy()
        if key in shared and array.size > 0:
            codebook, labels = cluster(array.reshape(-1).astype(np.float32), bits)
            arrays[f"codebook/{key}"] = codebook
            arrays[f"index/{key}"] = _pack(labels, bits)
            arrays[f"shape/{key}"] = np.array(array.shape, dtype=np.int64)
        else:
            arrays[f"raw/{key}"] = array
    return SharedWeights(bits, arrays)


def shared_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` stored in a ``model.shared.npz``: every shared weight replaced by its centroid."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != FORMAT:
                raise AutopruneError(f"'{path}' is not an autoprune shared-weights file")
            bits, files = int(f["bits"]), {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError) as e:
        raise AutopruneError(f"'{path}' is not a readable shared-weights file: {e}") from None
    state: dict[str, torch.Tensor] = {}
    try:
        for name, array in files.items():
            kind, _, key = name.partition("/")
            if kind == "raw":
                state[key] = torch.from_numpy(array.copy())
            elif kind == "codebook":
                shape = tuple(int(n) for n in files[f"shape/{key}"])
                indices = _unpack(files[f"index/{key}"], bits, int(np.prod(shape)))
                state[key] = torch.from_numpy(array[indices].reshape(shape))
    except (KeyError, ValueError, IndexError) as e:
        raise AutopruneError(f"'{path}' is not a readable shared-weights file: {type(e).__name__}: {e}") from None
    return state
