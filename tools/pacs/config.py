"""Where the PACS is and how to talk to it: one frozen ``PacsConfig``, from settings or TOML.

The URL says which protocol: ``http(s)://host[:port]/prefix`` is a DICOMweb service (QIDO-RS,
WADO-RS, STOW-RS under that prefix, e.g. Orthanc's ``/dicom-web``), ``dicom://AET@host:port``
a classic DIMSE peer (C-FIND, C-GET, C-STORE) whose AE title is ``AET``. Credentials never go
in the URL (URLs end up in logs and shell histories): they come from the environment
(``AgentContext`` reads ``MEDLOOP_PACS_USER`` / ``MEDLOOP_PACS_PASSWORD`` /
``MEDLOOP_PACS_TOKEN``) or from a TOML file that only its owner may read, for example::

    [pacs]
    url = "https://pacs.example.org/dicom-web"
    user = "medloop"
    password = "..."
    ca_bundle = "/etc/medloop/pacs-ca.pem"
    read_timeout_s = 30
    max_study_instances = 1000

Every network call made with a config is bounded: ``connect_timeout_s`` to open a connection,
``read_timeout_s`` for any single wait on the PACS, ``fetch_timeout_s`` for a whole study.
``max_study_instances`` and ``max_study_bytes`` refuse a study too big to fetch safely, before
its download when the PACS says how big it is and during it in any case.
"""

from __future__ import annotations

import re
import stat
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DEFAULT_CALLING_AET", "PacsConfig", "load_pacs_config"]

DEFAULT_CALLING_AET = "MEDLOOP"
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # AE title: 16 printable, no backslash
_SECRET_KEYS = ("password", "token")


@dataclass(frozen=True)
class PacsConfig:
    """One PACS and the limits medloop keeps to when it talks to it.

    Attributes:
        url: ``http(s)://host[:port]/prefix`` (DICOMweb) or ``dicom://AET@host:port`` (DIMSE).
        user: HTTP basic-auth user (DICOMweb), with ``password``.
        password: its password (never printed: ``repr`` hides it).
        token: a bearer token instead of user and password (DICOMweb).
        ca_bundle: a PEM file of the certificate authorities to trust for ``https``
            (a site CA); None trusts the system's.
        tls_verify: False turns certificate checks off (a test PACS only; a config file
            must say so explicitly).
        client_cert: a PEM file holding a client certificate and its key (mutual TLS).
        connect_timeout_s: seconds to open a connection (TCP, TLS, DICOM association).
        read_timeout_s: seconds any single wait for the PACS may take.
        fetch_timeout_s: seconds a whole study retrieval may take.
        max_study_instances: refuse a study with more instances than this.
        max_study_bytes: refuse a study whose files add up to more bytes than this.
        calling_aet: medloop's own AE title on DIMSE (the PACS must know it for C-GET).
    """

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    tls_verify: bool = True
    client_cert: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    fetch_timeout_s: float = 600.0
    max_study_instances: int = 2000
    max_study_bytes: int = 2 * 1024**3
    calling_aet: str = DEFAULT_CALLING_AET

    def __post_init__(self) -> None:
        _check_url(self.url)
        if self.token and (self.user or self.password):
            raise ValueError("give the PACS either a token or a user and password, not both")
        if bool(self.user) != bool(self.password):
            raise ValueError("a PACS user needs a password (and a password a user)")
        for name in ("connect_timeout_s", "read_timeout_s", "fetch_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"PACS {name} must be a positive number of seconds")
        if self.max_study_instances < 1 or self.max_study_bytes < 1:
            raise ValueError("PACS study limits must be at least 1")
        if not _AET.match(self.calling_aet):
            raise ValueError("the calling AE title must be 1 to 16 printable characters")
        for name in ("ca_bundle", "client_cert"):
            path = getattr(self, name)
            if path and not Path(path).expanduser().is_file():
                raise ValueError(f"PACS {name} {Path(path).name!r} is not a file")

    @property
    def protocol(self) -> str:
        """``dicomweb`` or ``dimse``."""
        return "dimse" if self.url.startswith("dicom://") else "dicomweb"

    @property
    def host(self) -> str:
        """The PACS host name or address."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The PACS port (the scheme's default for http / https)."""
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def called_aet(self) -> str:
        """The PACS's AE title (DIMSE)."""
        return urlsplit(self.url).username or ""

    @property
    def base_url(self) -> str:
        """The DICOMweb service root, without a trailing slash."""
        return self.url.rstrip("/")

    @property
    def where(self) -> str:
        """The PACS as error messages name it: host and port, never credentials."""
        return f"{self.host}:{self.port}"

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) seconds, as ``requests`` takes them."""
        return (float(self.connect_timeout_s), float(self.read_timeout_s))


def load_pacs_config(config_file: str | Path | None = None, **given: Any) -> PacsConfig | None:
    """The PACS settings: ``config_file`` (TOML) first, then every ``given`` value not None.

    Returns None when neither names a URL (no PACS configured).

    Raises:
        ValueError: a malformed file or value, an unknown key, or a file holding a password
            or token that users other than its owner can read.
    """
    settings: dict[str, Any] = {}
    if config_file:
        settings.update(_read_toml(Path(config_file).expanduser()))
    settings.update({k: v for k, v in given.items() if v is not None})
    if not settings.get("url"):
        return None
    known = {f.name for f in fields(PacsConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown PACS setting(s): {', '.join(unknown)}")
    return PacsConfig(**{k: _typed(k, v) for k, v in settings.items()})


_FLOATS = ("connect_timeout_s", "read_timeout_s", "fetch_timeout_s")
_INTS = ("max_study_instances", "max_study_bytes")


def _typed(name: str, value: Any) -> Any:
    """``value`` as the type setting ``name`` takes; ValueError naming the setting."""
    try:
        if name in _FLOATS:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if name in _INTS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if name == "tls_verify":
            if not isinstance(value, bool):
                raise ValueError
            return value
    except (TypeError, ValueError):
        kind = {"tls_verify": "true or false"}.get(
            name, "a number of seconds" if name in _FLOATS else "a whole number")
        raise ValueError(f"PACS setting {name} must be {kind}, got {value!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"PACS setting {name} must be text, got {value!r}")
    return value


def _check_url(url: str) -> None:
    """Refuse a PACS URL medloop cannot use, or one that carries credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "dicom"):
        raise ValueError(f"PACS URL must start with http://, https:// or dicom:// "
                         f"(got {parts.scheme or 'no scheme'}://)")
    if not parts.hostname:
        raise ValueError("PACS URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("PACS URL has a bad port") from None
    if parts.scheme != "dicom":
        if parts.username or parts.password:
            raise ValueError("put PACS credentials in MEDLOOP_PACS_USER / MEDLOOP_PACS_PASSWORD "
                             "or the PACS config file, not in the URL")
        return
    if not parts.username or not _AET.match(parts.username) or parts.password is not None:
        raise ValueError("a dicom:// PACS URL names the PACS's AE title and no password: "
                         "dicom://AET@host:port")
    if not port:
        raise ValueError("a dicom:// PACS URL needs the port: dicom://AET@host:port")


def _read_toml(path: Path) -> dict[str, Any]:
    """The ``[pacs]`` table of ``path`` (or its top level when it has none)."""
    if not path.is_file():
        raise ValueError(f"PACS config file {path.name!r} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"PACS config file {path.name!r} is not valid TOML: {exc}") from None
    table = data.get("pacs", data)
    if not isinstance(table, dict):
        raise ValueError(f"PACS config file {path.name!r}: [pacs] must be a table")
    mode = stat.S_IMODE(path.stat().st_mode)
    if any(table.get(k) for k in _SECRET_KEYS) and mode & 0o077:
        raise ValueError(f"PACS config file {path.name!r} holds a password or token and is "
                         f"readable by other users (mode {mode:o}); run `chmod 600` on it")
    return dict(table)
