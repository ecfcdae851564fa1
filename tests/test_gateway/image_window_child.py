"""The agent's image hub that tests/test_gateway/test_image_window.py kills with SIGKILL.

It opens a real ImageHub with the given window, says its image lane runs (as the uplink's
does when connected) though nothing will ever acknowledge an image, and stores an event image
every 20 ms, printing ``SEQ MONOTONIC TAG`` in one write once ``store()`` returned.

Usage: image_window_child.py DATA_DIR WINDOW_S
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from pathlib import Path

from tepi.core.clock import boottime
from tepi.gateway.config import ImagesSection
from tepi.gateway.images import ImageHub


def jpeg_like(n: int, tag: int) -> bytes:
    body = hashlib.sha256(str(tag).encode()).digest() * (n // 32 + 1)
    return b"\xff\xd8" + body[: n - 4] + b"\xff\xd9"


async def main(data: Path, window: float) -> None:
    cfg = ImagesSection.model_validate({"commit_interval": window})
    hub = ImageHub(cfg, data, boot_id="boot-child", reserve_bytes=lambda: 0, sync=False)
    await hub.open()
    hub.link(True)
    tag = 0
    while True:
        seq, _ = await hub.store(
            "cam-1",
            "event",
            jpeg_like(1500, tag),
            reason="test",
            ts=time.time(),
            mono=boottime(),
            width=64,
            height=48,
        )
        os.write(1, f"{seq} {time.monotonic()} {tag}\n".encode())
        tag += 1
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2])))
