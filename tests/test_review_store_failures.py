"""Every failure of the review board's file is a message, never a traceback (issue 14, finding 4).

Damaged, truncated, locked, read-only, full disk and an unwritable folder: the library raises a
``ReviewStoreError`` (a ``ValueError``) saying what happened and what to do, ``python -m explainers export``
prints one ``error:`` line and exits with status 2, the dashboard shows the message on the board and on
Save; and nothing already saved is lost or overwritten.

Root writes to read-only files and folders anyway, so those cases run in a child process that has given up
the capabilities that let root ignore file modes (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``,
``CAP_FOWNER``) when the tests run as root; the full disk is a 256 KB tmpfs where mounting one is
permitted, and a file-size limit (``RLIMIT_FSIZE``) covers a refused write everywhere.
"""

import contextlib
import ctypes
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from explainers import cli
from explainers.reviews import ReviewStore
from explainers.reviews.store import ReviewStoreError
from tests.dashboard_apptest import messages, open_app, problems
from tests.test_review_store import snapshot

ROOT = Path(__file__).resolve().parents[1]
PR_CAPBSET_DROP, FILE_MODE_CAPABILITIES = 24, (1, 2, 3)  # <linux/prctl.h>, <linux/capability.h>


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A board file with two saved reviews (and one comment), checkpointed into the main file."""
    path = tmp_path / "data" / "reviews.sqlite3"
    store = ReviewStore(path)
    store.save(snapshot("ann"))
    store.add_comment(store.save(snapshot("bob")), "cy", "keep")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"these are not the reviews you are looking for" * 100)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # "scrambled": the header intact, every page after the first overwritten
        path.write_bytes(data[:4096] + bytes(b ^ 0x5A for b in data[4096:]))


def export(db: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    status = cli.main(["export", "1", "--db", str(db), "--out", str(out)])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("how", ["garbage", "truncated", "scrambled"])
def test_a_damaged_board_is_a_message_and_is_left_as_it_is(board, how, tmp_path, capsys):
    damage(board, how)
    before = digest(board)
    with pytest.raises(ReviewStoreError, match="damaged"):
        store = ReviewStore(board)
        store.find()
        store.get(1)
    status, err = export(board, tmp_path / "out", capsys)
    assert status == 2 and err.startswith("error: ") and "damaged" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert digest(board) == before  # nothing repaired, recreated or deleted


def test_a_locked_board_is_a_message_and_loses_nothing(board):
    holder = sqlite3.connect(board, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program holds the write lock (and, in WAL, any reader waits)
    try:
        store = ReviewStore(board, timeout_s=0.2)
        with pytest.raises(ReviewStoreError, match="busy"):
            store.save(snapshot("dan"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [s.author for s in ReviewStore(board).find()] == ["bob", "ann"]


def _respect_file_modes() -> None:
    """In the child before ``exec``: drop the capabilities that let root write whatever the file modes say."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in FILE_MODE_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def as_unprivileged(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new Python for which file modes apply (even when this runs as root); its output."""
    extra = {"preexec_fn": _respect_file_modes} if os.geteuid() == 0 else {}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, **extra)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder whose mode the test sets (made writable again for clean-up)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    yield folder
    folder.chmod(0o755)


ATTEMPTS = """
    import sys
    from explainers.reviews import ReviewStore
    from explainers.reviews.store import ReviewStoreError
    from tests.test_review_store import snapshot
    try:
        store = ReviewStore(sys.argv[1])
        print("read", [s.author for s in store.find()])
        store.save(snapshot("eve"))
        print("SAVED")
    except ReviewStoreError as error:
        print("error", error)
"""


def test_a_read_only_board_can_be_read_but_saving_is_a_message(board, shared_dir):
    path = shared_dir / "reviews.sqlite3"
    shutil.copy(board, path)
    path.chmod(0o444)  # the file read-only; its folder writable (SQLite keeps its -shm index there)
    before = digest(path)
    result = as_unprivileged(ATTEMPTS, str(path))
    assert result.returncode == 0, result.stderr
    assert "read ['bob', 'ann']" in result.stdout
    assert "error" in result.stdout and "read-only" in result.stdout and "SAVED" not in result.stdout
    assert digest(path) == before


def test_an_unwritable_folder_is_a_message(shared_dir):
    shared_dir.chmod(0o555)
    result = as_unprivileged(ATTEMPTS, str(shared_dir / "reviews.sqlite3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("error") and "cannot be opened" in result.stdout
    result = as_unprivileged(ATTEMPTS, str(shared_dir / "new" / "reviews.sqlite3"))
    assert result.stdout.startswith("error") and "cannot be created" in result.stdout


def test_a_folder_that_is_a_file_is_a_message_on_the_command_line(tmp_path, capsys):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(ReviewStoreError, match="cannot be created"):
        ReviewStore(tmp_path / "data" / "reviews.sqlite3")


@contextlib.contextmanager
def small_disk(folder: Path) -> Iterator[bool]:
    """A 256 KB tmpfs on ``folder`` if this process may mount one; yields whether it did."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_a_message_and_keeps_what_was_saved(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    with small_disk(disk) as mounted:
        if not mounted:
            pytest.skip("cannot mount a small tmpfs here; the file-size-limit test covers the write failure")
        store = ReviewStore(disk / "reviews.sqlite3")
        kept = [store.save(snapshot("ann"))]
        with pytest.raises(ReviewStoreError, match="disk holding the review board is full"):
            for _ in range(100):
                kept.append(store.save(snapshot("ann", notes="x" * 4000)))
        assert [s.id for s in store.find()] == kept[::-1]
        assert store.get(kept[0]).snapshot.author == "ann"


def test_a_write_the_disk_refuses_is_a_message_and_keeps_what_was_saved(board):
    code = """
        import resource, signal, sys
        from explainers.reviews import ReviewStore
        from explainers.reviews.store import ReviewStoreError
        from tests.test_review_store import snapshot
        store = ReviewStore(sys.argv[1])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))  # no file may grow any more
        try:
            store.save(snapshot("eve", notes="x" * 4000))
        except ReviewStoreError as error:
            print("error", error)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(board)], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.stdout.startswith("error") and "cannot be used" in result.stdout, result.stderr
    assert [s.author for s in ReviewStore(board).find()] == ["bob", "ann"]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_a_damaged_board_is_a_message_on_the_board_and_on_save(board, data_dir):
    assert board.parent == data_dir
    damage(board, "garbage")
    before = digest(board)
    app = open_app(page="reviews")
    assert not problems(app) and "damaged" in messages(app)
    app = open_app(page="compare")
    app.text_input(key="review.author").input("ann")
    next(b for b in app.button if b.label == "Save to review board").click()
    app.run()
    assert not problems(app) and "damaged" in messages(app)
    assert digest(board) == before
