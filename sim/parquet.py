"""Tables as Parquet: the bytes of a DataFrame (no index), and a file written atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

from models.io import write_atomic


def parquet_bytes(df) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_parquet(df, path: str | os.PathLike) -> Path:
    """Write `df` to `path` through a temporary file and a rename (models.io.write_atomic)."""
    return write_atomic(path, parquet_bytes(df))
