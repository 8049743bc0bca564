"""The sparse codec, shared by the torch ``.cuttree`` format and the Keras ``.keras`` format (numpy only).

A tensor that is mostly zeros is stored as a zlib-compressed bit mask (one bit per element) and
its zlib-compressed non-zero element bytes. Exact: unpacking gives the original bits back.
"""

from __future__ import annotations

import zlib

import numpy as np

from cuttree.errors import FileFormatError

SPARSE_MIN_ZEROS = 0.3  # arrays with at least this fraction of zeros are stored sparse, where smaller
SPARSE_MIN_SIZE = 1024  # elements; smaller arrays are never worth the bookkeeping


def pack_sparse(keep: np.ndarray, nonzero_bytes: bytes) -> tuple[bytes, bytes]:
    """The compressed ``(mask, values)`` of a flat array: ``keep`` marks its non-zeros, in order.

    >>> m, v = pack_sparse(np.array([True, False, False, True]), b"ab")
    >>> unpack_mask(m, 4, 2, "x").tolist(), inflate(v, 2, "x")
    ([True, False, False, True], b'ab')
    """
    return zlib.compress(np.packbits(keep).tobytes(), 6), zlib.compress(nonzero_bytes, 6)


def inflate(data: bytes, size: int, what: str) -> bytes:
    """``data`` decompressed, refusing anything that is not exactly ``size`` bytes (a corrupt file or a bomb)."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, size + 1)  # bounded: never more than the declared size is allocated
    except zlib.error:
        raw = b""
    if len(raw) != size or d.unconsumed_tail:
        raise FileFormatError(f"compressed array '{what}' does not match its declared size; the file is corrupt")
    return raw


def unpack_mask(mask: bytes, numel: int, nnz: int, what: str) -> np.ndarray:
    """The boolean mask of :func:`pack_sparse`, checked against the declared non-zero count."""
    bits = np.frombuffer(inflate(mask, (numel + 7) // 8, what), dtype=np.uint8)
    keep = np.unpackbits(bits)[:numel].astype(bool)
    if int(keep.sum()) != nnz:
        raise FileFormatError(f"sparse array '{what}': its mask does not match its non-zero count; the file is corrupt")
    return keep
