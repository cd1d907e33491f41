"""Read the records of a W&B run file (run-ID.wandb): a LevelDB-style log of protobuf Records.

wandb >= 0.2x writes it from its Go core and ships no Python reader, so tests read it here.
Layout: a 7-byte file header (":W&B", magic, version), then 32 KiB blocks of chunks, each
chunk = crc32 (4) + length (2, little endian) + type (1: full, 2: first, 3: middle, 4: last).
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7


def read_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, chunks = HEADER, []
    while position + HEADER <= len(data):
        if BLOCK - position % BLOCK < HEADER:  # block trailer too short for a chunk header
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        payload = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == 0:
            continue
        chunks.append(payload)
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def history_rows(path: Path) -> list[dict[str, str]]:
    """Each wandb.log call as {key: JSON value}."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows
