"""A table as Parquet bytes (no index), for the run store; files are written by
models.io.write_parquet_atomic."""

from __future__ import annotations

import io


def parquet_bytes(df) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()
