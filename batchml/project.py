"""A Project binds a validated config to its storage and serving folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from batchml.config import Config, load_config
from batchml.store.storage import Storage

CONFIG_FILE = "batchml.toml"


def _is_url(location: str) -> bool:
    return "://" in location


@dataclass(frozen=True)
class Project:
    """Config + storage + the local folder where serving DuckDB files are built."""

    config: Config
    storage: Storage
    serving_dir: Path
    base_dir: Path

    @classmethod
    def open(cls, config_path: str | Path | None = None, *, storage: str | None = None) -> Project:
        """Open the project whose config is `config_path` ($BATCHML_CONFIG, else ./batchml.toml).

        `storage` (or $BATCHML_STORAGE) overrides the configured storage root. Without a config file the
        project uses the defaults: storage under ./data and no models.
        """
        path = Path(config_path or os.environ.get("BATCHML_CONFIG") or CONFIG_FILE)
        config = Config() if config_path is None and not path.exists() else load_config(path)
        return cls.from_config(config, base_dir=path.resolve().parent, storage=storage)

    @classmethod
    def from_config(cls, config: Config, *, base_dir: Path, storage: str | None = None) -> Project:
        """Build a project from an in-memory config; relative paths resolve against `base_dir`."""
        root = storage or os.environ.get("BATCHML_STORAGE") or config.storage.root
        if not _is_url(root) or root.startswith("file://"):
            local = Path(root.removeprefix("file://"))
            root = str(local if local.is_absolute() else (base_dir / local).resolve())
        store = Storage(root, **config.storage.options)
        if config.storage.serving_dir:
            serving = Path(config.storage.serving_dir)
            serving = serving if serving.is_absolute() else base_dir / serving
        elif store.is_local:
            serving = Path(store.root) / "serving"
        else:
            serving = base_dir / ".batchml" / "serving"
        return cls(config=config, storage=store, serving_dir=serving.resolve(), base_dir=base_dir)

    def resolve_source(self, source: str) -> str:
        """Make a relative local source path absolute against the project folder."""
        if _is_url(source) or Path(source).is_absolute():
            return source
        return str((self.base_dir / source).resolve())
