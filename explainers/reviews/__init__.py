"""The review board: saved snapshots of a view, their comments, and exports to bring to a meeting."""

from .store import (
    SCHEMA_VERSION,
    Comment,
    Review,
    ReviewStore,
    ReviewSummary,
    SecondModel,
    Snapshot,
    data_dir,
    default_path,
)

__all__ = [
    "SCHEMA_VERSION",
    "Comment",
    "Review",
    "ReviewStore",
    "ReviewSummary",
    "SecondModel",
    "Snapshot",
    "data_dir",
    "default_path",
]
