"""Store URLs -> Optuna storages, with every failure turned into one `StoreError` line."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import optuna

from sweepdae.errors import StoreError, StoreNotFound, StoreUnavailable, printable
from sweepdae.store._index import ensure_key_index
from sweepdae.store._journal import SafeJournalFileBackend

ENV_VAR = "SWEEPDAE_STORE"
DEFAULT_URL = "journal:./sweepdae.journal"
STUDY_NAME = "sweepdae"
EXPECTED = (
    "expected journal:PATH (or a PATH ending in .journal/.log), sqlite:///PATH or "
    "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
)

Kind = Literal["journal", "sqlite", "postgresql"]


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: `target` is the journal path or the SQLAlchemy URL handed to RDBStorage."""

    kind: Kind
    target: str
    shown: str  # the URL as messages print it (password masked, non-printable characters escaped)


def mask_password(url: str) -> str:
    """`url` with every password replaced by `***`: SQLAlchemy's own rendering of the URL (the password wherever its
    parser finds it, e.g. one holding `/` or a space) plus every query key that contains `password` (`sslpassword=`,
    any case); then, and for any text that is no URL (a driver's message quoting one), a conservative pass that masks
    everything between `scheme://user:` and the last `@` of the line, and every `...password...=` query value whole
    (to the next `&`)."""
    text = url
    if "\n" not in url and re.match(r"^[A-Za-z][\w+.-]*://", url):
        try:
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            query = {k: ("***" if "password" in k.lower() else v) for k, v in parsed.query.items()}
            text = parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
        except Exception:  # not a URL SQLAlchemy reads (a bad port, a journal path): the pass below masks it
            text = url
    return _mask_conservatively(text)


def _mask_conservatively(text: str) -> str:
    # userinfo: up to the LAST '@' of the line, since a password may hold '@', '/', ':', '?' or a space (SQLAlchemy
    # reads `alice:pa ss@host`); masking too much of a driver's message is the safe side
    text = re.sub(r"(\b[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\n]*@", r"\1***@", text)
    # a query value is whole up to the next '&' (`?sslpassword=a b&x=1`: `a b`)
    text = re.sub(r"(?i)([?&][^\s=&?]*password[^=&]*=)[^&\n]*", r"\1***", text)
    return re.sub(r"(?i)(\b\w*password\w*\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^&\s'\"]+)",
                  r"\1***", text)


def resolve_url(url: str | None) -> str:
    """`url`, else $SWEEPDAE_STORE, else the default journal file in the working directory."""
    if url is None or not url.strip():
        url = os.environ.get(ENV_VAR, "").strip() or DEFAULT_URL
    return url.strip()


def parse_url(url: str) -> StoreURL:
    """Classify a store URL; raise StoreError naming it and the accepted forms when it is malformed."""
    shown = printable(mask_password(url))
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        if path.startswith("//"):  # journal:///abs/path and journal://rel/path read as paths too
            path = path[2:]
        if not path:
            raise StoreError(f"malformed store URL '{shown}': no path after 'journal:'; {EXPECTED}")
        return StoreURL("journal", path, shown)
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise StoreError(f"malformed store URL '{shown}': {EXPECTED}")
        return StoreURL("sqlite", url, shown)
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        # psycopg 3 is the driver we ship (extra `postgres`); SQLAlchemy would otherwise pick psycopg2.
        if not rest or rest.startswith("/") and len(rest) == 1:
            raise StoreError(f"malformed store URL '{shown}': {EXPECTED}")
        if "@" in rest.split("?")[0].rpartition("@")[0]:
            # SQLAlchemy would end the password at the first '@' and take the rest of it for the host
            raise StoreError(f"malformed store URL '{shown}': the user or password holds '@' (write it as %40); "
                             f"{EXPECTED}")
        target = "postgresql+psycopg://" + rest
        try:
            from sqlalchemy.engine import make_url

            make_url(target)
        except Exception as exc:  # sqlalchemy.exc.ArgumentError, ValueError on a bad port
            raise StoreError(f"malformed store URL '{shown}': {printable(_first_line(exc))}; {EXPECTED}") from None
        return StoreURL("postgresql", target, shown)
    if sep or ":" in url.split("/")[0] and not re.match(r"^[A-Za-z]:[\\/]", url):
        raise StoreError(f"malformed store URL '{shown}': unknown scheme; {EXPECTED}")
    if url.endswith((".journal", ".log")):
        return StoreURL("journal", url, shown)
    raise StoreError(f"malformed store URL '{shown}': {EXPECTED}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class _QuietOptuna:
    """Silence Optuna's INFO lines ("A new study created ...") while the store opens: the CLI owns stderr."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("optuna")
        self._level = self._logger.level
        self._logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


def open_storage(
    parsed: StoreURL, *, create: bool, connect_timeout: float
) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    """Open the storage and the study "sweepdae" (created when `create`); every failure is a StoreError."""
    try:
        storage = _make_storage(parsed, create=create, connect_timeout=connect_timeout)
        with _QuietOptuna():
            try:
                # Load first: on a journal, create_study(load_if_exists=True) would append a log line per open.
                study = optuna.load_study(storage=storage, study_name=STUDY_NAME)
            except KeyError:
                if not create:
                    raise
                study = optuna.create_study(
                    storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True
                )
    except StoreError:
        raise
    except KeyError:
        raise StoreNotFound(f"no store at {parsed.shown}: it holds no study {STUDY_NAME!r}") from None
    except ImportError as exc:
        raise StoreError(
            f"cannot open store {parsed.shown}: {_first_line(exc)} (pip install 'sweepdae[postgres]')"
        ) from None
    except Exception as exc:  # SQLAlchemy OperationalError, psycopg errors, OSError, Optuna storage errors
        hint = " (expected a running PostgreSQL server that accepts this user)" if parsed.kind == "postgresql" else ""
        raise StoreUnavailable(f"cannot open store {parsed.shown}: {describe_error(exc)}{hint}") from None
    return storage, study


def describe_error(exc: BaseException) -> str:
    """One line for a driver error: the innermost cause's first line (SQLAlchemy wraps psycopg's message)."""
    inner: BaseException = exc
    while getattr(inner, "orig", None) is not None:  # sqlalchemy.exc.DBAPIError.orig
        inner = inner.orig  # type: ignore[attr-defined]
    if inner is exc and exc.__cause__ is not None:
        inner = exc.__cause__
    return printable(mask_password(_first_line(inner)))  # a driver's message may quote the URL's host or user


def _make_storage(parsed: StoreURL, *, create: bool, connect_timeout: float) -> optuna.storages.BaseStorage:
    if parsed.kind == "journal":
        path = Path(parsed.target).expanduser().absolute()  # a later chdir must not move the store
        if not path.exists():
            if not create:
                raise StoreNotFound(f"no store at {parsed.shown}: the journal file {str(path)!r} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalStorage

        return JournalStorage(SafeJournalFileBackend(str(path), parsed.shown))

    from optuna.storages import RDBStorage, _CachedStorage

    engine_kwargs: dict[str, object] = {}
    if parsed.kind == "sqlite":
        db_path = parsed.target[len("sqlite:///"):]
        if not create and db_path != ":memory:" and not Path(db_path).exists():
            raise StoreNotFound(f"no store at {parsed.shown}: the SQLite file {db_path!r} does not exist")
    else:
        # pool_pre_ping: a connection that died with a server restart is replaced instead of failing the call.
        engine_kwargs["pool_pre_ping"] = True
        if "connect_timeout=" not in parsed.target:
            # libpq counts whole seconds and treats < 2 as 2.
            engine_kwargs["connect_args"] = {"connect_timeout": max(2, round(connect_timeout))}
    if not create:
        _require_tables(parsed, engine_kwargs)
    rdb = RDBStorage(parsed.target, engine_kwargs=engine_kwargs, skip_table_creation=not create)
    if create:
        ensure_key_index(rdb.engine)
    # Optuna would wrap it the same way inside create_study; we keep the wrapper to read trials through its cache.
    return _CachedStorage(rdb)


def _require_tables(parsed: StoreURL, engine_kwargs: dict[str, object]) -> None:
    """For read-only opens: a database without Optuna's tables holds no store (and must not get them)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(parsed.target, **engine_kwargs)  # type: ignore[arg-type]
    try:
        if not sqlalchemy.inspect(engine).has_table("studies"):
            raise StoreNotFound(f"no store at {parsed.shown}: the database has no Optuna tables")
    finally:
        engine.dispose()
