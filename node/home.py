"""Where a node keeps its files: identity key, pool database, trust store, config, runs.

The data directory comes from `--home`, else the `P2PGOLF_HOME` environment variable, else
the platform's user data directory. Nothing here creates files; `p2pgolf init` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "P2PGOLF_HOME"


@dataclass(frozen=True)
class Home:
    """Paths inside one node's data directory."""

    root: Path

    @property
    def key_file(self) -> Path:
        return self.root / "identity.key"

    @property
    def pool_db(self) -> Path:
        return self.root / "pool.sqlite"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def control_socket(self) -> Path:
        return self.root / "node.sock"

    def exists(self) -> bool:
        return self.key_file.exists()


def resolve_home(explicit: str | os.PathLike | None = None) -> Home:
    """The data directory chosen by flag, environment, or platform default (in that order)."""
    if explicit:
        return Home(Path(explicit).expanduser().resolve())
    env = os.environ.get(HOME_ENV)
    if env:
        return Home(Path(env).expanduser().resolve())
    import platformdirs

    return Home(Path(platformdirs.user_data_dir("p2pgolf", appauthor=False)))
