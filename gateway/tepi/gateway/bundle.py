"""The offline bundle (systemd/bundle.sh), checked without unpacking it: the agent checks it
before it stages it, and the privileged switcher checks its own copy again before it installs
it (it does not trust the agent).

A bundle is a ``.tar.gz`` holding one directory, ``tepi-bundle-VERSION/``, with:

- ``MANIFEST``: one line a file, ``<sha256 hex>  <path>`` (sha256sum's format), every file of
  the directory but MANIFEST and MANIFEST.sig;
- ``MANIFEST.sig``: the Ed25519 signature of MANIFEST's bytes (``openssl pkeyutl -sign
  -rawin``), 64 bytes;
- ``bundle.info``: ``key=value`` lines, among them ``version=``.

:func:`verify` reads the tarball once, in order, hashing every member, and raises
:class:`BundleError` unless: every member is a regular file or a directory under the one top
directory (no link, device, absolute path or ``..``); MANIFEST's signature verifies with the
public key; every file is in MANIFEST with its sha256, and MANIFEST names no file that is
missing; bundle.info has a version as install.sh accepts it. Sizes and counts are bounded, so
a hostile tarball cannot fill the disk or the memory of whoever checks it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "VERSION_RE",
    "BundleError",
    "BundleInfo",
    "load_public_key",
    "parse_info",
    "parse_manifest",
    "verify",
]

# install.sh's VERSION_RE: a version names a directory (/opt/tepi/venv-VERSION-TIME).
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){1,3}((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$")
MAX_MEMBERS = 20_000
MAX_SMALL = 4 * 1024 * 1024  # MANIFEST, MANIFEST.sig, bundle.info: read into memory
_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")
_CHUNK = 1024 * 1024


class BundleError(ValueError):
    """A bundle that must not be installed; the message says why, for a person."""


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """A bundle that passed :func:`verify`."""

    top: str  # its directory, tepi-bundle-VERSION
    version: str
    files: int  # files checked against MANIFEST
    unpacked_bytes: int
    info: dict[str, str]


def parse_manifest(text: str) -> dict[str, str]:
    """MANIFEST's lines as {path: sha256}. Raises BundleError on a line that is not
    ``<64 hex>  <relative path>``, an unsafe path, or a path named twice."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise BundleError(f"MANIFEST line {n} is not '<sha256>  <path>'")
        digest, path = m.groups()
        _safe_path(path, f"MANIFEST line {n}")
        if path in out:
            raise BundleError(f"MANIFEST names {path!r} twice")
        out[path] = digest
    if not out:
        raise BundleError("MANIFEST is empty")
    return out


def parse_info(text: str) -> dict[str, str]:
    """bundle.info's ``key=value`` lines (blank lines skipped). BundleError for anything else
    or a version that is not one."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[a-z_]{1,32}", key):
            raise BundleError(f"bundle.info line {n} is not key=value")
        out[key] = value
    version = out.get("version", "")
    if not VERSION_RE.match(version):
        raise BundleError(f"bundle.info has no valid version: {version[:40]!r}")
    return out


def _safe_path(path: str, where: str) -> None:
    p = PurePosixPath(path)
    if (
        not path
        or p.is_absolute()
        or any(part in {"", ".", ".."} for part in path.split("/"))
        or "\\" in path
        or any(ord(c) < 32 for c in path)
    ):
        raise BundleError(f"{where}: unsafe path {path[:80]!r}")


def load_public_key(pem: bytes) -> object:
    """The builder's Ed25519 public key from PEM (``openssl pkey -pubout``) or the raw 32
    bytes. BundleError for anything else."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if len(pem) == 32:
        return Ed25519PublicKey.from_public_bytes(pem)
    try:
        key = load_pem_public_key(pem)
    except ValueError as err:
        raise BundleError(f"the signing key is not a PEM public key: {err}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("the signing key is not an Ed25519 key")
    return key


def verify(tarball: Path, public_key: bytes, *, max_unpacked: int) -> BundleInfo:
    """Check ``tarball`` (the module docstring) with ``public_key`` (PEM or 32 raw bytes).
    Raises BundleError (or OSError when it cannot be read)."""
    import tarfile  # (only for an update: not at every agent's start)

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = load_public_key(public_key)
    assert isinstance(key, Ed25519PublicKey)
    hashes: dict[str, str] = {}
    small: dict[str, bytes] = {}
    top: str | None = None
    total = 0
    try:
        with tarfile.open(tarball, mode="r|gz") as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise BundleError(f"more than {MAX_MEMBERS} files")
                name = member.name.removeprefix("./").rstrip("/")
                _safe_path(name, "the tarball")
                head, _, rest = name.partition("/")
                if top is None:
                    top = head
                elif head != top:
                    raise BundleError(f"more than one top directory: {top!r}, {head!r}")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BundleError(f"{name}: not a regular file (a link or a device)")
                if not rest:
                    raise BundleError(f"{name}: a file beside the bundle's directory")
                total += member.size
                if total > max_unpacked:
                    raise BundleError(f"unpacks to more than {max_unpacked} bytes")
                if rest in hashes:
                    raise BundleError(f"{rest} is twice in the tarball")
                f = tar.extractfile(member)
                assert f is not None
                digest = hashlib.sha256()
                keep = rest in {"MANIFEST", "MANIFEST.sig", "bundle.info"}
                if keep and member.size > MAX_SMALL:
                    raise BundleError(f"{rest} is too large")
                kept = bytearray()
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    if keep:
                        kept += chunk
                hashes[rest] = digest.hexdigest()
                if keep:
                    small[rest] = bytes(kept)
    except (tarfile.TarError, EOFError, ValueError) as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"not a readable .tar.gz: {err}") from None
    if top is None or "MANIFEST" not in small or "bundle.info" not in small:
        raise BundleError("not a tepi bundle: no MANIFEST or bundle.info")
    if "MANIFEST.sig" not in small:
        raise BundleError("not signed: no MANIFEST.sig (build it with bundle.sh --key)")
    try:
        key.verify(small["MANIFEST.sig"], small["MANIFEST"])
    except InvalidSignature:
        raise BundleError(
            "the signature does not verify with the bundle signing key (not built with the "
            "matching key, or changed since)"
        ) from None
    try:
        manifest = parse_manifest(small["MANIFEST"].decode())
    except UnicodeDecodeError:
        raise BundleError("MANIFEST is not UTF-8") from None
    files = {k: v for k, v in hashes.items() if k not in {"MANIFEST", "MANIFEST.sig"}}
    extra = sorted(set(files) - set(manifest))
    if extra:
        raise BundleError(f"files that are not in its MANIFEST: {', '.join(extra[:5])}")
    missing = sorted(set(manifest) - set(files))
    if missing:
        raise BundleError(f"files in MANIFEST that are missing: {', '.join(missing[:5])}")
    bad = sorted(p for p, d in manifest.items() if files[p] != d)
    if bad:
        raise BundleError(f"damaged: sha256 differs from MANIFEST: {', '.join(bad[:5])}")
    try:
        info = parse_info(small["bundle.info"].decode())
    except UnicodeDecodeError:
        raise BundleError("bundle.info is not UTF-8") from None
    return BundleInfo(top, info["version"], len(files), total, info)
