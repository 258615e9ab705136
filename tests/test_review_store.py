"""The review board's SQLite store: round trip, filters, comments, concurrency and schema upgrades."""

import multiprocessing
import multiprocessing.synchronize
import sqlite3
import threading
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from explainers.reviews import SCHEMA_VERSION, ReviewStore, SecondModel, Snapshot, default_path
from explainers.reviews.export import png_bytes
from explainers.reviews.store import MIGRATIONS, ReviewStoreError, maps_to_bytes, migrate, schema_version

ROWS_PER_WRITER = 5


def snapshot(author: str = "ann", model: str = "deit_tiny_patch16_224", image_id: str = "gallery:cat",
             methods: tuple[str, ...] = ("rollout", "gae"), notes: str = "") -> Snapshot:  # fmt: skip
    rng = np.random.default_rng(len(author) + len(notes))
    return Snapshot(
        author=author,
        notes=notes,
        model=model,
        device="cpu",
        image_id=image_id,
        image=png_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
        state={"page": "compare", "model": model, "image": image_id, "methods": ",".join(methods)},
        target=281,
        target_name="tabby cat",
        methods=methods,
        params={m: {"head_fusion": "max", "discard_ratio": 0.9} for m in methods},
        maps={m: rng.random((14, 14), dtype=np.float32) for m in methods},
        scores={"faithfulness": [{"method": m, "deletion AUC": 0.25, "insertion AUC": 0.5} for m in methods]},
        charts={"Deletion curves": '{"data": [{"type": "scatter", "y": [1, 0.5, 0.1]}], "layout": {}}'},
    )


def test_saved_review_comes_back_identical(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    saved = snapshot(notes="the head fires on the ear")
    review = store.get(store.save(saved))
    got = review.snapshot
    assert review.created_at.endswith("+00:00") and review.comments == ()
    for name in ("author", "notes", "model", "device", "image_id", "image", "state", "target", "target_name",
                 "methods", "params", "scores", "charts"):  # fmt: skip
        assert getattr(got, name) == getattr(saved, name), name
    assert list(got.maps) == list(saved.maps)
    for name, m in saved.maps.items():
        assert got.maps[name].dtype == np.float32
        np.testing.assert_array_equal(got.maps[name], m)


def test_find_filters_by_model_image_method_and_author(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    a = store.save(snapshot(author="ann", methods=("rollout",)))
    b = store.save(snapshot(author="bob", model="vit_small_patch16_224", methods=("gae", "raw_attention")))
    c = store.save(snapshot(author="bob", image_id="digits:7", methods=("rollout", "gae")))

    def ids(**filters: str) -> list[int]:
        return [r.id for r in store.find(**filters)]

    assert ids() == [c, b, a]  # newest first
    assert ids(author="bob") == [c, b]
    assert ids(model="vit_small_patch16_224") == [b]
    assert ids(image_id="digits:7") == [c]
    assert ids(method="gae") == [c, b]
    assert ids(method="rollout", author="bob") == [c]
    assert ids(method="grad_rollout") == []
    assert store.distinct("method") == ["gae", "raw_attention", "rollout"]
    assert store.distinct("author") == ["ann", "bob"]
    with pytest.raises(ValueError, match="choose one of"):
        store.distinct("notes")


def test_comments_are_kept_in_order_and_deleted_with_their_review(tmp_path: Path) -> None:
    path = tmp_path / "reviews.sqlite3"
    store = ReviewStore(path)
    review_id = store.save(snapshot())
    first = store.add_comment(review_id, "bob", "agree, but look at layer 3")
    second = store.add_comment(review_id, " ann ", " will do ")
    assert [c.id for c in store.get(review_id).comments] == [first.id, second.id]
    assert (second.author, second.text) == ("ann", "will do")
    assert store.find()[0].num_comments == 2
    with pytest.raises(KeyError, match="no review #999"):
        store.add_comment(999, "bob", "orphan")
    with pytest.raises(ValueError, match="author and some text"):
        store.add_comment(review_id, "bob", "   ")

    assert store.delete(review_id) is True
    assert store.delete(review_id) is False
    with pytest.raises(KeyError):
        store.get(review_id)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM comments").fetchone()[0] == 0


def test_snapshot_refuses_inconsistent_content() -> None:
    with pytest.raises(ValueError, match="author"):
        snapshot(author=" ")
    good = snapshot()
    with pytest.raises(ValueError, match="PNG"):
        Snapshot(**{**good.__dict__, "image": b"GIF89a"})
    with pytest.raises(ValueError, match="must be given for the methods"):
        Snapshot(**{**good.__dict__, "methods": ("rollout",)})
    with pytest.raises(ValueError, match=r"\(gh, gw\)"):
        Snapshot(**{**good.__dict__, "maps": {"rollout": np.ones(3), "gae": np.ones((2, 2))}})


def test_wal_file_under_the_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "server-data"))
    assert default_path() == tmp_path / "server-data" / "reviews.sqlite3"
    store = ReviewStore()
    assert store.path == default_path() and store.path.exists()
    with closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert schema_version(conn) == SCHEMA_VERSION


def test_eight_writer_threads_lose_nothing(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    barrier = threading.Barrier(8)
    saved: dict[str, list[int]] = {}

    def write(author: str) -> None:
        barrier.wait()
        ids = [store.save(snapshot(author=author, notes=str(i))) for i in range(ROWS_PER_WRITER)]
        store.add_comment(ids[0], author, "first!")
        saved[author] = ids

    threads = [threading.Thread(target=write, args=(f"thread-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(saved) == 8
    for author, ids in saved.items():
        assert sorted(r.id for r in store.find(author=author)) == sorted(ids)
        assert [store.get(i).snapshot.notes for i in ids] == [str(i) for i in range(ROWS_PER_WRITER)]
        assert store.get(ids[0]).comments[0].text == "first!"
    assert len(store.find()) == 8 * ROWS_PER_WRITER


def _write_from_process(path: str, author: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    store = ReviewStore(path)  # every process also races to create the schema of the fresh file
    for i in range(ROWS_PER_WRITER):
        store.save(snapshot(author=author, notes=str(i)))


def test_eight_writer_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "reviews.sqlite3"
    # fork where there is one: children need not re-import torch, and the parent holds no open connection.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    barrier = context.Barrier(8)
    authors = [f"process-{i}" for i in range(8)]
    processes = [context.Process(target=_write_from_process, args=(str(path), a, barrier)) for a in authors]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * 8

    store = ReviewStore(path)
    for author in authors:
        notes = sorted(store.get(r.id).snapshot.notes for r in store.find(author=author))
        assert notes == [str(i) for i in range(ROWS_PER_WRITER)]
    with closing(sqlite3.connect(path)) as conn:
        assert schema_version(conn) == SCHEMA_VERSION


def test_first_schema_version_file_opens_after_upgrade(tmp_path: Path) -> None:
    """A file written by v1 (no comments, no charts) keeps its rows and gains both when reopened."""
    path = tmp_path / "reviews.sqlite3"
    old = snapshot(author="early adopter", notes="saved before comments existed")
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert migrate(conn, 1) == 0  # the v1 release's DDL, exactly
        assert {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
            "reviews",
            "sqlite_sequence",
        }
        conn.execute(
            "INSERT INTO reviews (created_at, author, notes, model, device, image_id, image, state, target, "
            "target_name, methods, params, maps, scores) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("2025-01-01T00:00:00.000+00:00", old.author, old.notes, old.model, old.device, old.image_id,
             old.image, '{"page": "compare"}', old.target, old.target_name, '["rollout", "gae"]',
             "{}", maps_to_bytes(old.maps), "{}"),
        )  # fmt: skip
        assert schema_version(conn) == 1

    store = ReviewStore(path)
    with closing(sqlite3.connect(path)) as conn:
        assert schema_version(conn) == SCHEMA_VERSION == len(MIGRATIONS)
    [summary] = store.find(author="early adopter")
    review = store.get(summary.id)
    assert review.created_at == "2025-01-01T00:00:00.000+00:00"
    assert review.snapshot.notes == old.notes and review.snapshot.methods == ("rollout", "gae")
    assert review.snapshot.charts == {}
    np.testing.assert_array_equal(review.snapshot.maps["gae"], old.maps["gae"])
    store.add_comment(summary.id, "bob", "commented after the upgrade")
    assert store.get(summary.id).comments[0].text == "commented after the upgrade"
    assert store.save(snapshot()) > summary.id


def second_model(methods=("rollout", "gae")) -> SecondModel:
    rng = np.random.default_rng(7)
    return SecondModel(model="embedded", device="cpu", target=3, target_name="3",
                       image=png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
                       maps={m: rng.random((8, 8), dtype=np.float32) for m in methods})


def test_a_two_model_review_keeps_the_second_model(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    saved = replace(snapshot(), second=second_model())
    got = store.get(store.save(saved)).snapshot
    assert got.second is not None
    for name in ("model", "device", "target", "target_name", "image"):
        assert getattr(got.second, name) == getattr(saved.second, name), name
    for name, m in saved.second.maps.items():
        np.testing.assert_array_equal(got.second.maps[name], m)
    assert store.get(store.save(snapshot())).snapshot.second is None
    with pytest.raises(ValueError, match="must be among the methods"):
        replace(snapshot(methods=("rollout",)), second=second_model(("rollout", "gae")))


def test_second_schema_version_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """A v2 file (one model per review) keeps its rows and comments and takes two-model reviews after."""
    path = tmp_path / "reviews.sqlite3"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:  # a v2 board, v2 columns only
        assert migrate(conn, 2) == 0
        conn.execute(
            "INSERT INTO reviews (created_at, author, notes, model, device, image_id, image, state, target, "
            "target_name, methods, params, maps, scores, charts) VALUES "
            "('2025-06-01T00:00:00.000+00:00', 'ann', 'v2', 'embedded', 'cpu', 'digit:1', ?, '{}', 1, '1', "
            "'[\"rollout\"]', '{}', ?, '{}', '{}')",
            (snapshot().image, maps_to_bytes({"rollout": np.ones((8, 8), np.float32)})),
        )
        conn.execute("INSERT INTO comments (review_id, author, text, created_at) "
                     "VALUES (1, 'bob', 'hi', 'x')")
        assert schema_version(conn) == 2
    store = ReviewStore(path)
    with closing(sqlite3.connect(path)) as conn:
        assert schema_version(conn) == SCHEMA_VERSION == 4  # v3: second model, v4: owner
    review = store.get(1)
    assert review.snapshot.notes == "v2" and review.snapshot.second is None and review.snapshot.owner is None
    assert review.comments[0].text == "hi"
    assert store.get(store.save(replace(snapshot(), second=second_model()))).snapshot.second is not None


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "reviews.sqlite3"
    ReviewStore(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ReviewStoreError, match="upgrade the tool"):
        ReviewStore(path)
