"""sweepdae.store: the results store and work queue of every sweep, over Optuna storage.

One Optuna study, "sweepdae", holds every cell of every grid. `open_store(url)` returns a `Store`; its class
docstring states the contract that `tests/test_store.py` checks on every backend.

URLs (`None` -> $SWEEPDAE_STORE -> `journal:./sweepdae.journal`):

* `journal:PATH`, or a PATH ending in `.journal` / `.log`: an Optuna journal file. The default; safe for several
  processes on one machine (or a file system with working symlink locks).
* `postgresql://USER:PASSWORD@HOST:PORT/DB` (also `postgresql+psycopg://`, `postgres://`): PostgreSQL through the
  psycopg 3 driver (`pip install 'sweepdae[postgres]'`), for workers on several machines.
* `sqlite:///PATH`: only safe when one coordinator process makes every store call (SQLite has no row locks:
  two processes can claim the same cell).
"""

from __future__ import annotations

from sweepdae.errors import StoreError, StoreNotFound, StoreUnavailable
from sweepdae.store._common import DEFAULT_LEASE_S, Claim, LeaseState, TrainingLease, dead_local_owner
from sweepdae.store._queue import Enqueued, Reason
from sweepdae.store._registry import TUNE_STUDY_PREFIX, JobRecord, tune_study_name
from sweepdae.store._store import Messages, PatientStore, Store
from sweepdae.store._trainings import TRAININGS_STUDY
from sweepdae.store._trials import CellStatus
from sweepdae.store._url import DEFAULT_URL, ENV_VAR, STUDY_NAME, mask_password, open_storage, parse_url, resolve_url

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_URL",
    "ENV_VAR",
    "STUDY_NAME",
    "CellStatus",
    "Claim",
    "Enqueued",
    "JobRecord",
    "LeaseState",
    "Messages",
    "PatientStore",
    "Reason",
    "Store",
    "StoreError",
    "StoreNotFound",
    "StoreUnavailable",
    "TRAININGS_STUDY",
    "TUNE_STUDY_PREFIX",
    "TrainingLease",
    "dead_local_owner",
    "mask_password",
    "open_store",
    "resolve_url",
    "tune_study_name",
]


def open_store(url: str | None = None, *, create: bool = True, connect_timeout: float = 5.0) -> Store:
    """Open the store at `url` (None -> $SWEEPDAE_STORE -> `journal:./sweepdae.journal`).

    `create=False` is for read-only commands (status, report): a missing journal or SQLite file, or a database
    without the study, raises StoreNotFound("no store at ...") instead of creating anything. `connect_timeout`
    (seconds, PostgreSQL) bounds how long an unreachable server may take to fail. A malformed or unreachable
    URL raises StoreError with one line that names the URL (password masked) and says what was expected.
    """
    parsed = parse_url(resolve_url(url))
    storage, study = open_storage(parsed, create=create, connect_timeout=connect_timeout)
    return Store(parsed, storage, study)
