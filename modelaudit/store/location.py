"""Which database the scan store is: an explicit URL, else ``$MODELAUDIT_STORE``, else one SQLite file in
the user cache folder; and how a URL is shown in messages (password masked).

Light on purpose (no SQLAlchemy): the CLI resolves and names the store before anything is opened.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from modelaudit.errors import UsageError

DEFAULT_STORE_ENV = "MODELAUDIT_STORE"
"""Environment variable naming the store (a URL, a SQLite file path, or ``default``)."""
DEFAULT_STORE_WORD = "default"
"""``--store default``: the SQLite file in the user cache folder."""
APP_NAME = "modelaudit"
"""The folder name under the platform's user cache folder."""
STORE_FILE_NAME = "store.sqlite"
SQLITE_SCHEME = "sqlite:///"
_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^/?#]*@")
"""The password part of ``scheme://user:password@host``, up to the last ``@`` before the path."""


def default_store_path() -> Path:
    """``platformdirs.user_cache_dir("modelaudit")/store.sqlite`` (``~/.cache/modelaudit`` on Linux)."""
    import platformdirs  # only the default store needs it

    return Path(platformdirs.user_cache_dir(APP_NAME)) / STORE_FILE_NAME


def store_url(url: str | None = None) -> str:
    """The SQLAlchemy URL of the store: ``url``, else ``$MODELAUDIT_STORE``, else the default SQLite file.

    ``default`` names the default file (its folder is created); text without ``://`` is a SQLite file path.

    Raises:
        UsageError: the default store's folder cannot be created.
    """
    text = (url or os.environ.get(DEFAULT_STORE_ENV) or DEFAULT_STORE_WORD).strip()
    if text == DEFAULT_STORE_WORD:
        path = default_store_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"scan store {path}: cannot create its folder ({exc.strerror or exc})") from None
        return SQLITE_SCHEME + str(path)
    if "://" not in text:
        return SQLITE_SCHEME + str(Path(text).expanduser().absolute())
    return text


def mask_password(text: str, password: str | None = None) -> str:
    """``text`` (a URL, or a driver's message that may quote one) with the password shown as ``***``."""
    masked = _PASSWORD.sub(r"\1***@", text)
    if password:
        masked = masked.replace(password, "***")
    return masked
