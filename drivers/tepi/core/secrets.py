"""Where secrets are read from: files, or systemd's credentials (LoadCredential=)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_credential"]


def resolve_credential(path: Path, secrets_dir: Path | None = None) -> Path:
    """Where a ``password_file`` is read. A relative name is a credential in
    $CREDENTIALS_DIRECTORY (the unit's LoadCredential=). Outside the unit (``tepi doctor``
    run by hand) and given ``secrets_dir``, the file LoadCredential= loads it from:
    ``secrets_dir/NAME``."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds:
        return Path(creds) / path
    if not path.is_absolute() and secrets_dir is not None:
        return secrets_dir / path
    return path
