"""TFRecord framing, without TensorFlow: TensorBoard event files are written in it (``cnn_jax.train.events``) and
tfds datasets are stored in it (``cnn_jax.data.tfds_source`` indexes their records to stream them).

A TFRecord file is a sequence of records, each its data's length (uint64, little-endian), the masked CRC-32C of
those 8 bytes, the data, and the data's masked CRC-32C. It has no index: ``record_offsets`` finds every record by
reading only the headers.

This module sits at the package root, beside ``files`` and ``caches``, because it is a file format with no dataset
or training meaning: the event writer need not load ``cnn_jax.data``, nor the readers ``cnn_jax.train``.
"""
from __future__ import annotations

import os
import struct

import numpy as np

HEADER_BYTES = 12  # the length (8 bytes) and its masked CRC (4); the data's masked CRC (4 bytes) follows the data
FOOTER_BYTES = 4


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits plus a constant, so a CRC of CRCs stays informative."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def record_offsets(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, length) of every record's data in the TFRecord file ``path``, int64, found from the headers alone
    (a few syscalls per record, no data read).

    Raises ValueError when the file ends inside a record, as a file cut short does.
    """
    offsets, lengths = [], []
    with open(path, "rb") as file:
        size, position = os.fstat(file.fileno()).st_size, 0
        while position < size:
            header = os.pread(file.fileno(), HEADER_BYTES, position)
            length = int.from_bytes(header[:8], "little")
            end = position + HEADER_BYTES + length + FOOTER_BYTES
            if len(header) < HEADER_BYTES or end > size:
                raise ValueError(f"{path} is cut short at byte {position}: not a complete TFRecord file")
            offsets.append(position + HEADER_BYTES)
            lengths.append(length)
            position = end
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)
