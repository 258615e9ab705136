"""The review board: snapshots of a view (state, image, maps, scores, notes) in one SQLite file.

One connection per call, so a :class:`ReviewStore` may be shared by threads and opened by several
processes at once: the file is in WAL mode (readers never block the writer) and every connection waits
up to ``BUSY_TIMEOUT_MS`` for a lock instead of failing. The schema is versioned with
``PRAGMA user_version``; :data:`MIGRATIONS` is the ordered list of steps from an empty file, applied
in one ``BEGIN IMMEDIATE`` transaction so that two processes opening an old file never both upgrade it
and an interrupted upgrade leaves it untouched.

Every failure of the file (damaged, locked for too long, read-only, disk full, folder not writable) is a
:class:`ReviewStoreError` (a ``ValueError``) whose message says what happened and what to do; nothing is
ever repaired, recreated or deleted to get past one, so no saved review is lost or overwritten. A file
that is already at the current schema is only read on opening, so a read-only board can still be read.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..names import DB_NAME

DATA_DIR_ENV = "VIT_EXPLAIN_DATA_DIR"
BUSY_TIMEOUT_MS = 30_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Longest author name, notes and comment (characters): longer text is refused with a message.
MAX_AUTHOR_CHARS, MAX_NOTES_CHARS, MAX_COMMENT_CHARS = 100, 5_000, 2_000

#: Version ``i + 1`` of the schema is reached by running ``MIGRATIONS[i]`` on version ``i``. Never edit a
#: released step: append a new one (files in the wild are at every earlier version).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v1: one row per saved snapshot.
    (
        """CREATE TABLE reviews (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            author TEXT NOT NULL,
            notes TEXT NOT NULL,
            model TEXT NOT NULL,
            device TEXT NOT NULL,
            image_id TEXT NOT NULL,
            image BLOB NOT NULL,
            state TEXT NOT NULL,
            target INTEGER NOT NULL,
            target_name TEXT NOT NULL,
            methods TEXT NOT NULL,
            params TEXT NOT NULL,
            maps BLOB NOT NULL,
            scores TEXT NOT NULL
        )""",
        "CREATE INDEX reviews_model_image ON reviews (model, image_id)",
    ),
    # v2: reviewers comment on a saved review (comments go with it when it is deleted); the charts of
    # the view are kept with it.
    (
        """CREATE TABLE comments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            review_id INTEGER NOT NULL REFERENCES reviews (id) ON DELETE CASCADE,
            author TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX comments_review ON comments (review_id)",
        "ALTER TABLE reviews ADD COLUMN charts TEXT NOT NULL DEFAULT '{}'",
    ),
    # v3: a review may compare two models: the second one's spec, device, class, image and maps (NULL
    # for a review of one model, as every review saved before).
    (
        "ALTER TABLE reviews ADD COLUMN second_model TEXT",
        "ALTER TABLE reviews ADD COLUMN second_device TEXT",
        "ALTER TABLE reviews ADD COLUMN second_target INTEGER",
        "ALTER TABLE reviews ADD COLUMN second_target_name TEXT",
        "ALTER TABLE reviews ADD COLUMN second_image BLOB",
        "ALTER TABLE reviews ADD COLUMN second_maps BLOB",
    ),
    # v4: the signed-in identity that saved a review (NULL without sign-in): who may delete it.
    ("ALTER TABLE reviews ADD COLUMN owner TEXT",),
)
SCHEMA_VERSION = len(MIGRATIONS)


def data_dir() -> Path:
    """Where the server keeps its files: ``$VIT_EXPLAIN_DATA_DIR``, or ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def default_path() -> Path:
    return data_dir() / DB_NAME


def now_utc() -> str:
    """The current time as an ISO 8601 UTC string (sorts chronologically as text)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReviewStoreError(ValueError):
    """The review board cannot be read or written; the message says why and what to do."""


def check_length(what: str, text: str, limit: int) -> None:
    """A ``ValueError`` naming the limit when ``text`` is longer than ``limit`` characters."""
    if len(text) > limit:
        raise ValueError(f"The {what} is {len(text):,} characters long; the limit is {limit:,}.")


def maps_to_bytes(maps: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: np.asarray(m, dtype=np.float32) for name, m in maps.items()})
    return buffer.getvalue()


def maps_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


@dataclass(frozen=True)
class SecondModel:
    """The second model of a two-model review: what it is, the class it explained and its maps.

    Attributes:
        model, device: as :attr:`Snapshot.model` and :attr:`Snapshot.device`.
        target, target_name: the class it explained (the first model's by name where it knows it).
        image: the image as this model saw it, PNG bytes.
        maps: per method, its ``(gh, gw)`` map on this model's own patch grid.
    """

    model: str
    device: str
    target: int
    target_name: str
    image: bytes
    maps: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        _check_maps(self.image, self.maps)


def _check_maps(image: bytes, maps: Mapping[str, np.ndarray]) -> None:
    if not image.startswith(PNG_SIGNATURE):
        raise ValueError("the image of a review must be PNG bytes")
    bad = [name for name, m in maps.items() if np.ndim(m) != 2]
    if bad:
        raise ValueError(f"each map must be a (gh, gw) array; {bad[0]!r} has shape {np.shape(maps[bad[0]])}")


@dataclass(frozen=True)
class Snapshot:
    """What "Save to review board" keeps of a view.

    Attributes:
        author: who saved it.
        notes: free text.
        model: model spec as the dashboard loads it (e.g. ``deit_tiny_patch16_224``).
        device: ``cpu``, ``cuda``...
        image_id: the image's id in the URL state (gallery id, digit seed or upload hash).
        image: the image as PNG bytes, as it was explained.
        state: the view's query parameters; setting them again reopens the exact view.
        target: class explained; ``target_name`` its label.
        methods: explainers shown, in display order.
        params: per method, its parameter values.
        maps: per method, its ``(gh, gw)`` map.
        scores: per table (e.g. ``agreement``, ``faithfulness``), its rows as records (column → value).
        charts: per title, a Plotly figure as JSON (``fig.to_json()``), as shown in the view.
        second: the second model of a two-model view, or None.
        owner: the signed-in identity that saved it, when the server has sign-in (None otherwise).
    """

    author: str
    notes: str
    model: str
    device: str
    image_id: str
    image: bytes
    state: dict[str, str]
    target: int
    target_name: str
    methods: tuple[str, ...]
    params: dict[str, dict[str, Any]]
    maps: dict[str, np.ndarray]
    scores: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    charts: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    second: SecondModel | None = None

    def __post_init__(self) -> None:
        if not self.author.strip():
            raise ValueError("a review needs an author name")
        check_length("author name", self.author.strip(), MAX_AUTHOR_CHARS)
        check_length("text of the notes", self.notes, MAX_NOTES_CHARS)
        if list(self.maps) != list(self.methods):
            raise ValueError(f"maps {list(self.maps)} must be given for the methods {list(self.methods)}")
        _check_maps(self.image, self.maps)
        if self.second is not None and not set(self.second.maps) <= set(self.methods):
            raise ValueError(f"the second model's maps {list(self.second.maps)} must be among the methods "
                             f"{list(self.methods)}")


@dataclass(frozen=True)
class Comment:
    id: int
    review_id: int
    author: str
    text: str
    created_at: str


@dataclass(frozen=True)
class ReviewSummary:
    """A row of the review list: everything but the image, the maps and the comments' text."""

    id: int
    created_at: str
    author: str
    notes: str
    model: str
    device: str
    image_id: str
    target: int
    target_name: str
    methods: tuple[str, ...]
    num_comments: int


@dataclass(frozen=True)
class Review:
    """A saved snapshot with its id, time and comments (oldest first)."""

    id: int
    created_at: str
    snapshot: Snapshot
    comments: tuple[Comment, ...]


#: Snapshot fields stored as they are (the others are JSON or npz).
_PLAIN_FIELDS = ("author", "notes", "model", "device", "image_id", "image", "target", "target_name", "owner")
_SUMMARY_COLUMNS = [f.name for f in fields(ReviewSummary) if f.name != "num_comments"]


class ReviewStore:
    """The review board in the SQLite file ``path`` (created, or upgraded to :data:`SCHEMA_VERSION`)."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, timeout_s: float = BUSY_TIMEOUT_MS / 1000
    ) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.timeout_s = timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ReviewStoreError(
                f"The folder of the review board ({self.path.parent}) cannot be created: "
                f"{error.strerror or error}. The operator must create it, writable by the server."
            ) from None
        with self._connect() as conn:
            if schema_version(conn) != SCHEMA_VERSION:  # a new or older file: set up and upgrade it
                _enable_wal(conn, self.timeout_s)
                migrate(conn)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection in autocommit mode: each statement is its own transaction. SQLite's errors
        become :class:`ReviewStoreError`."""
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            with closing(conn):
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
                conn.execute("PRAGMA foreign_keys = ON")
                yield conn
        except sqlite3.Error as error:
            raise self._failure(error) from error

    def _failure(self, error: sqlite3.Error) -> ReviewStoreError:
        """What a SQLite error means for the people using the board, and what to do about it."""
        name, text = getattr(error, "sqlite_errorname", ""), str(error)
        where = f"The review board ({self.path.name})"
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return ReviewStoreError(
                f"{where} is damaged ({text}); nothing was changed. The operator can restore it from a "
                "backup, or move it aside to start a new board (`sqlite3 FILE .recover` saves what is "
                "readable)."
            )
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return ReviewStoreError(f"{where} is busy: another program held it for more than "
                                    f"{self.timeout_s:g} s ({text}). Nothing was changed; try again.")
        if name.startswith("SQLITE_READONLY"):
            return ReviewStoreError(f"{where} is read-only on the server ({text}): reviews can be read but "
                                    "not saved, commented or deleted. The operator must make it writable.")
        if name.startswith("SQLITE_FULL"):
            return ReviewStoreError(f"The disk holding the review board is full ({text}): nothing was saved. "
                                    "The operator must free some space.")
        if name.startswith("SQLITE_CANTOPEN"):
            return ReviewStoreError(f"{where} cannot be opened ({text}): its folder must exist and be "
                                    "writable by the server.")
        return ReviewStoreError(f"{where} cannot be used ({text}); nothing was changed.")

    def save(self, snapshot: Snapshot) -> int:
        """Store ``snapshot`` now; returns the new review's id."""
        row = {name: getattr(snapshot, name) for name in _PLAIN_FIELDS} | {
            "created_at": now_utc(),
            "author": snapshot.author.strip(),
            "target": int(snapshot.target),
            "state": json.dumps(snapshot.state),
            "methods": json.dumps(list(snapshot.methods)),
            "params": json.dumps(snapshot.params),
            "maps": maps_to_bytes(snapshot.maps),
            "scores": json.dumps(snapshot.scores),
            "charts": json.dumps(snapshot.charts),
            **_second_columns(snapshot.second),
        }
        columns = ", ".join(row)
        values = ", ".join(f":{name}" for name in row)
        with self._connect() as conn:
            cursor = conn.execute(f"INSERT INTO reviews ({columns}) VALUES ({values})", row)
            return int(cursor.lastrowid)

    def get(self, review_id: int) -> Review:
        """The review ``review_id`` with its comments, or a ``KeyError``."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM reviews WHERE id = ?", (review_id,)).fetchone()
            if row is None:
                raise KeyError(f"no review #{review_id} on the board (deleted, or in another data directory)")
            comments = conn.execute(
                "SELECT * FROM comments WHERE review_id = ? ORDER BY id", (review_id,)
            ).fetchall()
        try:
            snapshot = Snapshot(
                **{name: row[name] for name in _PLAIN_FIELDS},
                state=json.loads(row["state"]),
                methods=tuple(json.loads(row["methods"])),
                params=json.loads(row["params"]),
                maps=maps_from_bytes(row["maps"]),
                scores=json.loads(row["scores"]),
                charts=json.loads(row["charts"]),
                second=None if row["second_model"] is None else SecondModel(
                    model=row["second_model"],
                    device=row["second_device"],
                    target=row["second_target"],
                    target_name=row["second_target_name"],
                    image=row["second_image"],
                    maps=maps_from_bytes(row["second_maps"]),
                ),
            )
        except (ValueError, TypeError, OSError, zipfile.BadZipFile) as error:
            raise ReviewStoreError(f"Review #{review_id} is damaged and cannot be shown ({error}).") from None
        return Review(row["id"], row["created_at"], snapshot, tuple(Comment(**c) for c in comments))

    def find(
        self,
        *,
        model: str | None = None,
        image_id: str | None = None,
        method: str | None = None,
        author: str | None = None,
    ) -> list[ReviewSummary]:
        """Saved reviews, newest first, keeping those that match every filter given."""
        where, args = [], []
        for column, value in (("model", model), ("image_id", image_id), ("author", author)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if method:
            where.append("EXISTS (SELECT 1 FROM json_each(reviews.methods) WHERE value = ?)")
            args.append(method)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_SUMMARY_COLUMNS)}, "
                "(SELECT count(*) FROM comments WHERE review_id = reviews.id) AS num_comments "
                f"FROM reviews {clause} ORDER BY created_at DESC, id DESC",
                args,
            ).fetchall()
        return [ReviewSummary(**{**dict(row), "methods": tuple(json.loads(row["methods"]))}) for row in rows]

    def distinct(self, column: str) -> list[str]:
        """The values present for a filter: ``model``, ``image_id``, ``author`` or ``method``."""
        queries = {
            "model": "SELECT DISTINCT model FROM reviews",
            "image_id": "SELECT DISTINCT image_id FROM reviews",
            "author": "SELECT DISTINCT author FROM reviews",
            "method": "SELECT DISTINCT j.value FROM reviews, json_each(reviews.methods) AS j",
        }
        if column not in queries:
            raise ValueError(f"cannot list values of {column!r}: choose one of {', '.join(queries)}")
        with self._connect() as conn:
            return sorted(value for (value,) in conn.execute(queries[column]))

    def add_comment(self, review_id: int, author: str, text: str) -> Comment:
        """Append a comment to review ``review_id`` (a ``KeyError`` if it does not exist)."""
        if not author.strip() or not text.strip():
            raise ValueError("a comment needs an author and some text")
        check_length("author name", author.strip(), MAX_AUTHOR_CHARS)
        check_length("comment", text.strip(), MAX_COMMENT_CHARS)
        comment = Comment(0, review_id, author.strip(), text.strip(), now_utc())
        row = (comment.review_id, comment.author, comment.text, comment.created_at)
        with self._connect() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO comments (review_id, author, text, created_at) VALUES (?, ?, ?, ?)", row
                )
            except sqlite3.IntegrityError:  # the foreign key: no such review
                raise KeyError(f"no review #{review_id} on the board") from None
        return replace(comment, id=int(cursor.lastrowid))

    def delete(self, review_id: int, *, owner: str | None = None) -> bool:
        """Delete review ``review_id`` and its comments; ``False`` if there was no such review.

        With ``owner`` (a signed-in identity that is not an admin), only a review saved by that identity
        is deleted: ``False`` for anyone else's.
        """
        with self._connect() as conn:
            if owner is None:
                return conn.execute("DELETE FROM reviews WHERE id = ?", (review_id,)).rowcount > 0
            deleted = conn.execute("DELETE FROM reviews WHERE id = ? AND owner = ?", (review_id, owner))
            return deleted.rowcount > 0


def _second_columns(second: SecondModel | None) -> dict[str, Any]:
    """The ``second_*`` columns of a review (all NULL for a review of one model)."""
    names = ("model", "device", "target", "target_name", "image", "maps")
    if second is None:
        return {f"second_{name}": None for name in names}
    values = {name: getattr(second, name) for name in names}
    values["target"], values["maps"] = int(second.target), maps_to_bytes(second.maps)
    return {f"second_{name}": value for name, value in values.items()}


def _enable_wal(conn: sqlite3.Connection, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """Switch the file to WAL (a persistent setting). The switch needs the file to itself and SQLite
    reports ``database is locked`` at once, without its busy handler, while another process creates
    or switches it; so it is retried until the busy timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() == "wal":
                return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error):
                raise
        if time.monotonic() > deadline:
            error = sqlite3.OperationalError("could not switch the review database to WAL: it stays locked")
            error.sqlite_errorname = "SQLITE_BUSY"
            raise error
        time.sleep(0.02)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction taken up front (no upgrade of a read lock, so no deadlock between writers)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database of ``conn`` (autocommit) to schema ``target``; returns the version found.

    A file newer than this code is refused rather than written to with an older layout.
    """
    with _immediate(conn):
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise ReviewStoreError(
                f"the review database is at schema v{found} but this version of the tool knows up to "
                f"v{SCHEMA_VERSION}: upgrade the tool"
            )
        for step in MIGRATIONS[found:target]:
            for statement in step:
                conn.execute(statement)
        if target > found:
            conn.execute(f"PRAGMA user_version = {target}")
    return found
