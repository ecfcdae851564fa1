"""What tests/test_gateway/test_update*.py share: the bundle signing keys (openssl, as
bundle.sh and install.sh use them), bundles in the real format, a real HTTPS server with a
trustme CA, and a wait on a condition."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from tepi.gateway.localbroker import free_port

__all__ = ["Keys", "Server", "build_bundle", "https", "keys", "make_bundle", "openssl", "until"]


async def until(cond: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until ``cond()`` holds (checked every 50 ms), at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


def openssl(*args: str | Path) -> None:
    res = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )
    assert res.returncode == 0, res.stderr


@dataclass
class Keys:
    private: Path
    public: Path
    other: Path  # a private key the box does not trust


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    k = Keys(d / "signing.pem", d / "signing.pub", d / "other.pem")
    openssl("genpkey", "-algorithm", "ed25519", "-out", k.private)
    openssl("pkey", "-in", k.private, "-pubout", "-out", k.public)
    openssl("genpkey", "-algorithm", "ed25519", "-out", k.other)
    return k


def make_bundle(
    out: Path,
    version: str,
    mode: str,
    key: Path,
    *,
    closed_port: int = 1,
    extra: dict[str, bytes] | None = None,
    after_sign: Callable[[Path], None] | None = None,
) -> tuple[Path, str]:
    """A bundle as bundle.sh makes it (MANIFEST, its openssl signature, bundle.info), with
    the fake agent ``mode`` for files. (tarball, sha256)."""
    top = out / f"stage-{version}-{mode}" / f"tepi-bundle-{version}"
    top.mkdir(parents=True)
    files = {
        "bundle.info": f"name=tepi\nversion={version}\npython=3.11\nplatforms=x86_64\n".encode(),
        "agent.py": b"# run by update_harness.py\n",
        "agent.json": json.dumps(
            {"version": version, "mode": mode, "closed_port": closed_port}
        ).encode(),
        "tepi.service": f"# the unit of {version}\n".encode(),
        "wheels/tepi-placeholder.txt": b"no wheels in a test bundle\n",
        **(extra or {}),
    }
    for name, data in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(data)
    manifest = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    )
    (top / "MANIFEST").write_text(manifest)
    openssl(
        "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", top / "MANIFEST",
        "-out", top / "MANIFEST.sig",
    )  # fmt: skip
    if after_sign is not None:
        after_sign(top)
    tarball = out / f"tepi-bundle-{version}-{mode}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    return tarball, hashlib.sha256(tarball.read_bytes()).hexdigest()


# ---- a real HTTPS server ------------------------------------------------------------------


@dataclass
class Server:
    base: str
    ca_file: Path
    files: dict[str, Path]
    hits: list[str]


@pytest.fixture
async def https(tmp_path: Path) -> AsyncIterator[Server]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = Server("", ca_file, {}, [])

    async def get(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        server.hits.append(name)
        if name == "flaky" and server.hits.count("flaky") == 1:
            return web.Response(status=503)
        path = server.files.get(name)
        if path is None:
            return web.Response(status=404)
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{name}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "localhost", port, ssl_context=ctx).start()
    server.base = f"https://localhost:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def build_bundle(out: Path, key: Path, *, timeout: float = 300, native: bool = True) -> None:
    """The real offline bundle for this machine's platform (``bundle.sh --native``, with this
    Python's pip: PyPI or pip's cache), signed with ``key``. ``native=False``: the bundle a
    release ships, for aarch64 and x86_64."""
    repo = Path(__file__).resolve().parent.parent
    res = subprocess.run(
        [str(repo / "systemd/bundle.sh"), *(["--native"] if native else []),
         "--python", sys.executable, "--key", str(key), str(out)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
