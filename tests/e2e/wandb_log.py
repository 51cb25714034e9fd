"""The records of a W&B offline run file (``run-<id>.wandb``), for tests.

wandb 0.31 writes the file from its Go core and no longer ships the Python reader
(``wandb.sdk.internal.datastore``); the format is LevelDB's log format under a W&B header,
which its ``wandb sync`` reads: 32 KiB blocks of chunks, each ``crc32, length, type``, a record
in one chunk (type 1) or split over first (2), middle (3) and last (4). The records themselves
are parsed with wandb's own protobufs (``wandb.proto.wandb_internal_pb2.Record``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[bytes]:
    """Each record's bytes, in order."""
    data = path.read_bytes()
    ident, magic, _version = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file (header {ident!r}, {magic:#x})")
    pos, parts = HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = CHUNK.unpack_from(data, pos)
        pos += CHUNK.size
        if kind == 0 and length == 0:  # zero fill: the end of what was written
            return
        chunk, pos = data[pos : pos + length], pos + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = chunk
        elif kind == MIDDLE:
            parts += chunk
        elif kind == LAST:
            yield parts + chunk
