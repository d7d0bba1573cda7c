"""TensorBoard scalars written without TensorFlow: importing it costs seconds that a short run should not pay.

An event file is a TFRecord file (``cnn_jax.tfrecord``) of ``Event`` protocol buffers. The few messages needed
are encoded here by hand (field numbers from TensorFlow's ``event.proto`` and ``summary.proto``): a first event
with the file version, then one event per step whose summary holds ``simple_value`` scalars, which TensorBoard
reads as its scalars plugin's.
"""
from __future__ import annotations

import os
import socket
import struct
import time

from cnn_jax.tfrecord import record

FILE_VERSION = b"brain.Event:2"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, **what: bytes) -> bytes:
    """An Event: wall_time (1, double), step (2, int64), then file_version (3) or summary (5)."""
    message = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if "file_version" in what:
        message += _bytes_field(3, what["file_version"])
    if "summary" in what:
        message += _bytes_field(5, what["summary"])
    return message


def _scalars(scalars: dict) -> bytes:
    """A Summary: one Value (1) per scalar, with its tag (1, string) and simple_value (2, float)."""
    return b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value))
                    for tag, value in scalars.items())


class EventFileWriter:
    """Appends scalar events to a new ``events.out.tfevents.<time>.<host>.<pid>`` file in ``directory``; each write
    is flushed, so TensorBoard sees it at once. A symbolic link of that name is refused (OSError), not followed."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        now = time.time()
        self.path = os.path.join(directory, f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}")
        self._file = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "ab")
        self._file.write(record(_event(now, 0, file_version=FILE_VERSION)))
        self._file.flush()

    def write(self, step: int, scalars: dict) -> None:
        self._file.write(record(_event(time.time(), step, summary=_scalars(
            {tag: float(value) for tag, value in scalars.items()}))))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
