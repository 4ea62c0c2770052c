"""Read back what an offline W&B run wrote: its ``.wandb`` transaction log and its ``files/`` folder.

No account, no network, no W&B API: the records are parsed from the file the run itself wrote.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path


def read_wandb_log(path: Path, settle_s: float = 30.0) -> list:
    """The records of a ``.wandb`` transaction log (LevelDB-log framing: 32 KiB blocks, 7-byte chunk headers).

    ``wandb.finish()`` can return while W&B's service process is still writing the log (seen on a
    loaded 2-core machine: the last record cut short, "Wire format was corrupt"). So the log is read
    again until it parses and ends with the run's ``exit`` record, for up to ``settle_s`` seconds.
    """
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + settle_s
    while True:
        out_of_time = time.monotonic() > deadline
        try:
            records = _parse_wandb_log(path.read_bytes())
        except DecodeError:
            if out_of_time:
                raise
        else:
            if out_of_time or (records and records[-1].WhichOneof("record_type") == "exit"):
                return records
        time.sleep(0.2)


def _parse_wandb_log(data: bytes) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding to the block end
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run(save_dir: Path) -> dict:
    """History keys / values, media, config, group and artifacts of the one offline run under ``save_dir``."""
    (run_dir,) = (save_dir / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    history: dict[str, list] = {}
    config: dict[str, object] = {}
    artifacts, group = [], None
    for record in read_wandb_log(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "run":
            group = record.run.run_group
        elif kind == "artifact":
            artifacts.append((record.artifact.type, [entry.path for entry in record.artifact.manifest.contents],
                              list(record.artifact.aliases)))
    return {"dir": run_dir, "history": history, "config": config, "group": group, "artifacts": artifacts}
