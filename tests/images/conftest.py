"""Fixtures for the image tests: generated images and a local HTTP server (127.0.0.1 only)."""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter


def natural_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Photo-like synthetic RGB image: gradient, random shapes, blur, mild noise."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    base = (c0 * (1 - t) + c1 * t) * np.ones((1, w, 1))
    img = Image.fromarray(base.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(max(1, w // 10), max(2, w // 2))), y0 + int(rng.integers(max(1, h // 10), max(2, h // 2)))
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.integers(0, 2) else d.rectangle)([x0, y0, x1, y1], fill=col)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    a = np.asarray(img).astype(np.float32) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    b = io.BytesIO()
    img.convert("RGB").save(b, "JPEG", quality=quality)
    return b.getvalue()


def huge_png_bytes(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares enormous dimensions (a decompression bomb), tiny on disk."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def huge_png_header():
    return huge_png_bytes


@pytest.fixture(scope="session")
def natural():
    return natural_image


class Server:
    """Serves ``routes[path] = (status, body, delay_s[, headers])`` (a header given as None is not
    sent: ``{"Content-Length": None}`` sends a body of unannounced length); routes may change during the
    test. ``hits`` lists the paths requested (to show that a refused URL was never fetched);
    ``host`` is a loopback address (127.0.0.2 stands in for a public host in the guard tests)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        if not host.startswith("127."):
            raise ValueError(f"test servers bind to loopback only, not {host!r}")
        self.routes: dict[str, tuple] = {}
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits.append(self.path)
                status, body, delay, *more = server.routes.get(self.path, (404, b"not found", 0.0))
                headers = more[0] if more else {}
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/octet-stream")
                    if headers.get("Content-Length", "") is not None:  # None: no length, body until close
                        self.send_header("Content-Length", str(len(body)))
                    for k, v in headers.items():
                        if v is not None:
                            self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def http_server():
    srv = Server()
    yield srv
    srv.close()
