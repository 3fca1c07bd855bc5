"""Where a search's Optuna study lives: ``RUN_DIR/optuna.journal``, Optuna's own JournalStorage.

``optuna-dashboard RUN_DIR/optuna.journal`` opens it. Optuna's ``JournalFileBackend`` needs a local
file, so for a run directory behind a filesystem URI (``s3://...``, ``gs://...``) the journal is
downloaded to a local temporary copy when the study is opened, and the whole copy is uploaded after
every ask and tell (``RunDir.write_bytes``: written to a temporary name, then moved into place, so a reader
never sees a partial journal). A local run directory holds the journal itself.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from autoprune.searching.storage import RunDir

if TYPE_CHECKING:
    import optuna

JOURNAL_FILE = "optuna.journal"


class StudyJournal:
    """The study called ``name`` in ``run``'s journal; opened on first use, so a searcher without a study
    (``uniform``) never creates the file."""

    def __init__(self, run: RunDir, name: str) -> None:
        self.run, self.name = run, name
        self._storage: optuna.storages.JournalStorage | None = None
        self._copy: tempfile.TemporaryDirectory[str] | None = None
        self._path: Path | None = None

    def storage(self) -> optuna.storages.JournalStorage:
        """The journal as an Optuna storage (for a remote run directory: a local copy of it)."""
        if self._storage is None:
            import optuna  # only when a search runs
            from optuna.storages.journal import JournalFileBackend

            if self.run.is_local:
                self.run.makedirs()
                self._path = Path(self.run.join(JOURNAL_FILE))
            else:
                self._copy = tempfile.TemporaryDirectory(prefix="autoprune-journal-")
                self._path = Path(self._copy.name) / JOURNAL_FILE
                if self.run.exists(JOURNAL_FILE):
                    self._path.write_bytes(self.run.read_bytes(JOURNAL_FILE))
            self._storage = optuna.storages.JournalStorage(JournalFileBackend(str(self._path)))
        return self._storage

    def trials(self) -> int:
        """How many trials the study already holds (0 when it does not exist yet)."""
        storage = self.storage()
        try:
            study_id = storage.get_study_id_from_name(self.name)
        except KeyError:
            return 0
        return storage.get_n_trials(study_id)

    def save(self) -> None:
        """Upload the local copy to a remote run directory; a local journal is already in place."""
        if self._copy is not None and self._path is not None:
            self.run.write_bytes(JOURNAL_FILE, self._path.read_bytes())
