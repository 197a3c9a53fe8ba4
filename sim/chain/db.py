"""Opening the chain database: SQLite file by default, PostgreSQL by URL.

`open_chain(url)` connects (a clear `ChainDatabaseError` if the server cannot be reached),
checks the schema version (`SchemaVersionError` for a database made by another version) and
returns an engine; `create_chain(url, params)` makes a fresh chain (genesis) in an empty database.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine

from sim.chain import tables as T
from sim.chain.params import ChainParams
from sim.pricing import grace_price


class ChainDatabaseError(RuntimeError):
    """The chain database cannot be reached, created or read."""


class SchemaVersionError(ChainDatabaseError):
    """The database was made by another schema version."""


def sqlite_url(path: str | os.PathLike) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str) -> Engine:
    """An engine for `url` (a path is taken as a SQLite file). SQLite gets WAL and foreign-key pragmas."""
    if "://" not in url:
        url = sqlite_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ChainDatabaseError(f"database url {url!r} is not a valid SQLAlchemy URL "
                                 f"(e.g. sqlite:///chain.db or postgresql+psycopg://user@host/db): {err}") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ChainDatabaseError(f"database url {_safe(url)}: backend {parsed.get_backend_name()!r} not supported; "
                                 "allowed: sqlite, postgresql")
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not Path(db).parent.is_dir():
            raise ChainDatabaseError(f"database url {_safe(url)}: directory {str(Path(db).parent)!r} does not exist")
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _rec):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = create_engine(url, connect_args={"connect_timeout": 5}, pool_pre_ping=True)
    try:
        with engine.connect():
            pass
    except OperationalError as err:
        engine.dispose()
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise ChainDatabaseError(f"cannot reach the chain database at {_safe(url)}: {reason}") from None
    return engine


def check_schema(engine: Engine) -> T.ChainMeta | None:
    """The chain's meta row, or None for an empty database; SchemaVersionError otherwise."""
    names = set(inspect(engine).get_table_names())
    if not names:
        return None
    if "chain_meta" not in names:
        raise SchemaVersionError(
            f"the database at {_safe(str(engine.url))} holds tables {sorted(names)[:5]}... but no chain_meta: "
            f"it was not made by t2vsim (schema version {T.SCHEMA_VERSION}); use an empty database")
    with Session(engine) as s:
        meta = s.get(T.ChainMeta, 1)
    if meta is None:
        raise SchemaVersionError(f"the database at {_safe(str(engine.url))} has an empty chain_meta table; "
                                 "it is not a complete t2vsim chain")
    if meta.schema_version != T.SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database at {_safe(str(engine.url))} was made by chain schema version {meta.schema_version}; "
            f"this t2vsim uses version {T.SCHEMA_VERSION}. Start a new database (another file or URL); "
            "old chains are not migrated")
    expected = set(SQLModel.metadata.tables) & _CHAIN_TABLES
    missing = expected - names
    if missing:
        raise SchemaVersionError(f"the database at {_safe(str(engine.url))} lacks tables {sorted(missing)} of "
                                 f"schema version {T.SCHEMA_VERSION}")
    return meta


_CHAIN_TABLES = {t.__tablename__ for t in (T.ChainMeta, T.Participant, T.Epoch, T.Block, T.Inference, T.Validation,
                                           T.InvalidationVote, T.PocCommit, T.PocValidation, T.PriceHistory,
                                           T.SeedCommit, T.ConfirmationPocResult, T.LedgerEntry, T.AppliedMessage)}


def _tables():
    return [SQLModel.metadata.tables[n] for n in sorted(_CHAIN_TABLES)]


def create_chain(url: str, params: ChainParams | None = None) -> Engine:
    """A fresh chain (genesis, height 0) in an empty database; refuses a database already in use."""
    params = params or ChainParams()
    engine = make_engine(url)
    if check_schema(engine) is not None:
        engine.dispose()
        raise ChainDatabaseError(f"the database at {_safe(url)} already holds a chain; open it with open_chain "
                                 "or use another file or URL")
    try:
        with engine.begin() as conn:
            SQLModel.metadata.create_all(conn, tables=_tables())
        with Session(engine) as s, s.begin():
            start_price = grace_price(0, params.price_rule)
            s.add(T.ChainMeta(schema_version=T.SCHEMA_VERSION, unit_price_ngonka=int(
                params.price_rule.base_unit_price_ngonka if start_price is None else start_price),
                params_json=params.model_dump_json()))
            s.add(T.Epoch(index=0, start_block=1))
    except SQLAlchemyError as err:
        raise ChainDatabaseError(f"cannot create the chain at {_safe(url)}: {err}") from None
    return engine


def open_chain(url: str) -> Engine:
    """Open an existing chain (schema checked)."""
    engine = make_engine(url)
    if check_schema(engine) is None:
        engine.dispose()
        raise ChainDatabaseError(f"the database at {_safe(url)} holds no chain; create one with create_chain")
    return engine


def chain_params(engine: Engine) -> ChainParams:
    with Session(engine) as s:
        meta = s.get(T.ChainMeta, 1)
    return ChainParams.model_validate_json(meta.params_json)


def drop_chain(engine: Engine) -> None:
    """Remove every chain table (tests use it to clean a shared PostgreSQL database)."""
    with engine.begin() as conn:
        SQLModel.metadata.drop_all(conn, tables=_tables())
