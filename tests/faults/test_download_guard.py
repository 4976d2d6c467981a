"""A hostile pool cannot make the download stage read local files, reach this machine, the intranet
or a cloud metadata service, or decode a decompression bomb.

The policy (``curation.netguard``) is tested on URL text and a replaced resolver (no test reaches
the internet); the fetch guard against servers on 127.0.0.1 and 127.0.0.2, where a test may treat
127.0.0.2 as a public address; the stage end to end with img2dataset (``slow``).
"""
from __future__ import annotations

import importlib.util
import io
import multiprocessing
import socket
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import netguard
from curation.netguard import GuardError, UrlPolicy, check_url, reason_of


def _load_image_helpers():
    """The image tests' helpers (loopback HTTP server, generated images, PNG bomb), loaded by path:
    with ``--import-mode=importlib`` a test folder is no package to import from."""
    path = Path(__file__).resolve().parents[1] / "images" / "conftest.py"
    spec = importlib.util.spec_from_file_location("metacurate_tests_image_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_images = _load_image_helpers()
Server = _images.Server
huge_png_bytes = _images.huge_png_bytes


# --------------------------------------------------------------------------- the policy
@pytest.mark.parametrize("url, reason", [
    ("file:///etc/passwd", "bad_scheme"),
    ("FILE:///etc/passwd", "bad_scheme"),
    ("data:image/png;base64,iVBORw0KGgo=", "bad_scheme"),
    ("ftp://93.184.216.34/x.jpg", "bad_scheme"),
    ("javascript:alert(1)", "bad_scheme"),
    ("gopher://93.184.216.34/", "bad_scheme"),
    ("", "bad_scheme"),
    ("   ", "bad_scheme"),
    (None, "bad_scheme"),
    ("not a url", "bad_scheme"),
    ("//93.184.216.34/x.jpg", "bad_scheme"),
    ("http://", "bad_url"),
    ("http:///x.jpg", "bad_url"),
    ("http://[::1/x.jpg", "bad_url"),
    ("http://93.184.216.34:99999/", "bad_url"),
    ("http://exa mple.com/x.jpg", "bad_url"),
    ("http://127.0.0.1/x.jpg", "blocked_address"),
    ("http://127.9.9.9:8080/x.jpg", "blocked_address"),
    ("http://localhost/x.jpg", "blocked_address"),
    ("http://LOCALHOST./x.jpg", "blocked_address"),
    ("http://img.localhost/x.jpg", "blocked_address"),
    ("http://[::1]/x.jpg", "blocked_address"),
    ("http://[::ffff:127.0.0.1]/x.jpg", "blocked_address"),
    ("http://[::ffff:a9fe:a9fe]/", "blocked_address"),  # mapped 169.254.169.254
    ("http://2130706433/x.jpg", "blocked_address"),
    ("http://0x7f.1/x.jpg", "blocked_address"),
    ("http://0x7f000001/x.jpg", "blocked_address"),
    ("http://0177.0.0.1/x.jpg", "blocked_address"),
    ("http://127.1/x.jpg", "blocked_address"),
    ("http://%31%32%37.0.0.1/x.jpg", "blocked_address"),  # urllib unquotes the host
    ("http://%4c%4f%43%41%4c%48%4f%53%54/x.jpg", "blocked_address"),  # LOCALHOST, quoted
    ("http://user:pw@127.0.0.1/x.jpg", "blocked_address"),
    ("http://10.0.0.1/x.jpg", "blocked_address"),
    ("http://192.168.1.1/x.jpg", "blocked_address"),
    ("http://172.16.0.1/x.jpg", "blocked_address"),
    ("http://172.31.255.255/x.jpg", "blocked_address"),
    ("http://100.64.0.1/x.jpg", "blocked_address"),
    ("http://[fd12::1]/x.jpg", "blocked_address"),
    ("http://169.254.169.254/latest/meta-data/", "blocked_address"),
    ("http://[fe80::1]/x.jpg", "blocked_address"),
    ("http://[fe80::1%25eth0]/x.jpg", "blocked_address"),
    ("http://224.0.0.1/x.jpg", "blocked_address"),
    ("http://[ff02::1]/x.jpg", "blocked_address"),
    ("http://0.0.0.0/x.jpg", "blocked_address"),
    ("http://0/x.jpg", "blocked_address"),
    ("http://[::]/x.jpg", "blocked_address"),
    ("http://240.0.0.1/x.jpg", "blocked_address"),
    ("http://255.255.255.255/x.jpg", "blocked_address"),
    ("http://192.0.2.1/x.jpg", "blocked_address"),  # documentation range
    ("http://[2002:7f00:1::]/x.jpg", "blocked_address"),  # 6to4 of 127.0.0.1
    ("http://[64:ff9b::a00:1]/x.jpg", "blocked_address"),  # NAT64 of 10.0.0.1
])
def test_refused_urls(url, reason):
    verdict = UrlPolicy().explain(url)
    assert verdict is not None and verdict[0] == reason, verdict
    assert check_url(url) == reason
    assert verdict[1]  # a detail saying what was refused and why


@pytest.mark.parametrize("url", [
    "http://93.184.216.34/x.jpg", "https://93.184.216.34:8443/a/b.png?x=1#f", "HTTP://93.184.216.34/x.jpg",
    "http://[2606:4700:4700::1111]/x.jpg", "http://user:pw@93.184.216.34/x.jpg", "http://8.8.8.8/",
])
def test_public_ip_literals_are_allowed(url):
    assert check_url(url) is None


def test_switches():
    assert check_url("http://127.0.0.1:8000/x.jpg", allow_loopback=True) is None
    assert check_url("http://[::1]/x.jpg", allow_loopback=True) is None
    assert check_url("http://localhost/x.jpg", allow_loopback=True) is None
    assert check_url("http://10.0.0.1/x.jpg", allow_loopback=True) == "blocked_address"
    for private in ("10.0.0.1", "192.168.1.1", "172.16.0.1", "100.64.0.1", "[fd12::1]"):
        assert check_url(f"http://{private}/x.jpg", allow_private=True) is None, private
    assert check_url("http://127.0.0.1/x.jpg", allow_private=True) == "blocked_address"
    # never allowed, whatever the switches: metadata services, link-local, multicast, reserved
    for host in ("169.254.169.254", "169.254.1.1", "[fd00:ec2::254]", "100.100.100.200", "[fe80::1]",
                 "224.0.0.1", "240.0.0.1", "0.0.0.0"):
        assert check_url(f"http://{host}/x", allow_loopback=True, allow_private=True) == "blocked_address", host
    assert "allow_loopback" in UrlPolicy().explain("http://127.0.0.1/")[1]
    assert "metadata" in UrlPolicy(True, True).explain("http://169.254.169.254/")[1]


def test_host_names_are_resolved_once_per_host(monkeypatch):
    import ipaddress

    table = {"cdn.example": ["93.184.216.34"], "intranet.example": ["10.0.0.5"],
             "mixed.example": ["93.184.216.34", "127.0.0.1"], "v6.example": ["::1"]}
    calls = []

    def fake_resolve(host):
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    monkeypatch.setattr(netguard, "resolve", fake_resolve)
    policy = UrlPolicy()
    assert all(policy.check(f"http://cdn.example/{i}.jpg") is None for i in range(1000))
    assert calls == ["cdn.example"]  # cached per host
    reason, detail = policy.explain("http://intranet.example/x.jpg")
    assert reason == "blocked_address" and "10.0.0.5" in detail and "private" in detail
    assert policy.check("http://mixed.example/x.jpg") == "blocked_address"  # any refused address refuses
    assert policy.check("http://v6.example/x.jpg") == "blocked_address"
    assert policy.check("http://nowhere.example/x.jpg") == "unresolvable"
    assert UrlPolicy(allow_private=True).check("http://intranet.example/x.jpg") is None
    # without resolution a name passes (the fetch guard checks the address when it connects)
    calls.clear()
    assert UrlPolicy(resolve=False).check("http://intranet.example/x.jpg") is None and calls == []
    assert UrlPolicy(resolve=False).check("http://localhost/x.jpg") == "blocked_address"


def test_classify_error_reads_guard_and_size_refusals():
    from jobs.stages.download import classify_error

    msg = "<urlopen error refused by netguard (blocked_address): 127.0.0.1 is a loopback address>"
    assert classify_error("failed_to_download", msg) == "blocked_address"
    assert classify_error("failed_to_download", str(GuardError("bad_scheme", "scheme 'ftp'"))) == "bad_scheme"
    assert classify_error("failed_to_resize", "image area too large") == "too_large"
    assert classify_error("failed_to_resize", "OpenCV(4.14.0) ... pixels <= CV_IO_MAX_IMAGE_PIXELS in function "
                                              "'validateInputImageSize'") == "too_large"
    assert reason_of("HTTP Error 404: Not Found") is None


# --------------------------------------------------------------------------- the fetch guard
@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """A safety net for this process: a socket may connect to 127.0.0.0/8 only, so a guard that
    failed to refuse an address fails its test here instead of reaching the network."""
    import ipaddress

    real = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and \
                not ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback:
            raise OSError(f"test safety net: no connection to {address[0]} from the guard tests")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture()
def servers():
    """``inner`` on 127.0.0.1 (this machine: refused) and ``outer`` on 127.0.0.2 (made public by
    ``public_127_0_0_2``)."""
    inner, outer = Server("127.0.0.1"), Server("127.0.0.2")
    inner.routes["/secret"] = (200, b"SECRET-FROM-THIS-MACHINE", 0.0)
    outer.routes["/img"] = (200, b"public image bytes", 0.0)
    yield inner, outer
    inner.close()
    outer.close()


@pytest.fixture()
def public_127_0_0_2(monkeypatch):
    """The policy counts 127.0.0.2 as a public address and everything else as it is."""
    real = netguard.address_kind

    def kind(ip):
        return None if str(ip) == "127.0.0.2" else real(ip)

    monkeypatch.setattr(netguard, "address_kind", kind)


def _refusal(excinfo) -> str | None:
    return reason_of(str(excinfo.value))


def test_guard_fetches_what_the_policy_allows(servers):
    inner, _ = servers
    opener = netguard.guard_opener(allow_loopback=True)
    assert opener.open(inner.url("/secret"), timeout=5).read() == b"SECRET-FROM-THIS-MACHINE"
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(inner.url("/missing"), timeout=5)
    assert e.value.code == 404


def test_guard_refuses_loopback_and_other_schemes(servers, tmp_path):
    inner, _ = servers
    opener = netguard.guard_opener()
    with pytest.raises(OSError) as e:
        opener.open(inner.url("/secret"), timeout=5)
    assert _refusal(e) == "blocked_address"
    secret = tmp_path / "secret.txt"
    secret.write_text("local file")
    for url in (secret.as_uri(), "data:text/plain;base64,aGVsbG8=", "ftp://93.184.216.34/x"):
        with pytest.raises(OSError) as e:
            netguard.guard_opener(allow_loopback=True, allow_private=True).open(url, timeout=5)
        assert _refusal(e) == "bad_scheme", url
    assert "/secret" not in inner.hits


def test_redirect_from_a_public_host_to_a_refused_one(servers, public_127_0_0_2):
    inner, outer = servers
    outer.routes["/to-inner"] = (302, b"", 0.0, {"Location": inner.url("/secret")})
    outer.routes["/to-metadata"] = (301, b"", 0.0, {"Location": "http://169.254.169.254/latest/meta-data/"})
    outer.routes["/to-file"] = (302, b"", 0.0, {"Location": "file:///etc/passwd"})
    outer.routes["/to-ftp"] = (307, b"", 0.0, {"Location": "ftp://93.184.216.34/x"})
    inner_port = inner.base.rsplit(":", 1)[1]
    outer.routes["/to-decimal"] = (308, b"", 0.0, {"Location": f"http://2130706433:{inner_port}/secret"})
    outer.routes["/to-public"] = (302, b"", 0.0, {"Location": "/img"})
    opener = netguard.guard_opener()
    assert opener.open(outer.url("/img"), timeout=5).read() == b"public image bytes"
    assert opener.open(outer.url("/to-public"), timeout=5).read() == b"public image bytes"  # redirects work
    for path, reason in (("/to-inner", "blocked_address"), ("/to-metadata", "blocked_address"),
                         ("/to-file", "bad_scheme"), ("/to-ftp", "bad_scheme"), ("/to-decimal", "blocked_address")):
        with pytest.raises(OSError) as e:
            opener.open(outer.url(path), timeout=5)
        assert _refusal(e) == reason, (path, str(e.value))
        assert "redirect from" in str(e.value)
    assert "/secret" not in inner.hits
    # the same redirect with loopback allowed is followed: the refusal above was the policy's
    assert netguard.guard_opener(allow_loopback=True).open(outer.url("/to-inner"), timeout=5).read() == \
        b"SECRET-FROM-THIS-MACHINE"


def test_dns_rebinding_is_caught_when_connecting(servers, public_127_0_0_2, monkeypatch):
    """A name that looks public when checked and points at this machine when fetched."""
    inner, _ = servers
    real = socket.getaddrinfo
    answers = iter(["127.0.0.2"])

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.example":
            return real(next(answers, "127.0.0.1"), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://rebind.example:{inner.url('').rsplit(':', 1)[1]}/secret"
    assert UrlPolicy().check(url) is None  # the pre-check saw 127.0.0.2 ("public")
    with pytest.raises(OSError) as e:
        netguard.guard_opener().open(url, timeout=5)
    assert _refusal(e) == "blocked_address" and "127.0.0.1" in str(e.value)
    # the same check on the HTTPS handler's connections
    with pytest.raises(OSError) as e:
        netguard.guard_opener().open(url.replace("http://", "https://"), timeout=5)
    assert _refusal(e) == "blocked_address" and "127.0.0.1" in str(e.value)
    assert "/secret" not in inner.hits


def test_through_a_proxy_the_url_is_checked_before_the_request(monkeypatch):
    """With an environment proxy the proxy connects (the connect-time check cannot see the
    target): the URL, with DNS, is checked before the request goes to the proxy."""
    import ipaddress

    proxy = Server("127.0.0.1")
    try:
        proxy.routes["http://93.184.216.34/x.jpg"] = (200, b"via proxy", 0.0)
        for var in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(var, proxy.base)
        for var in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(netguard, "resolve", lambda host: [ipaddress.ip_address(
            {"intranet.example": "10.0.0.5"}.get(host, "93.184.216.34"))])
        opener = netguard.guard_opener()
        assert opener.open("http://93.184.216.34/x.jpg", timeout=5).read() == b"via proxy"
        for url in ("http://127.0.0.1:9/x.jpg", "http://169.254.169.254/latest/", "http://intranet.example/x.jpg"):
            with pytest.raises(OSError) as e:
                opener.open(url, timeout=5)
            assert _refusal(e) == "blocked_address", url
        assert proxy.hits == ["http://93.184.216.34/x.jpg"]
    finally:
        proxy.close()


def test_guarded_installs_for_the_block_only(servers):
    inner, _ = servers
    before = getattr(urllib.request, "_opener", None)
    with netguard.guarded():
        with pytest.raises(OSError) as e:
            urllib.request.urlopen(inner.url("/secret"), timeout=5)  # img2dataset's call
        assert _refusal(e) == "blocked_address"
        with netguard.guarded():  # nesting with the same switches shares the guard
            pass
        with pytest.raises(RuntimeError):
            with netguard.guarded(allow_loopback=True):
                pass
    assert getattr(urllib.request, "_opener", None) is before
    assert "/secret" not in inner.hits


def test_guarded_call_guards_a_spawned_worker(servers, tmp_path):
    """img2dataset's process pool uses ``spawn``: an opener installed here would not be there,
    the pickled GuardedCall installs it in the worker (and takes it away after the call)."""
    inner, _ = servers
    target = str(tmp_path / "fetched")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        with pytest.raises(OSError) as e:
            pool.apply(netguard.GuardedCall(urllib.request.urlretrieve), (inner.url("/secret"), target))
        assert _refusal(e) == "blocked_address"
        assert inner.hits == []
        # the control: the same worker, unguarded, fetches it
        pool.apply(urllib.request.urlretrieve, (inner.url("/secret"), target))
    assert inner.hits == ["/secret"] and Path(target).read_bytes() == b"SECRET-FROM-THIS-MACHINE"


# --------------------------------------------------------------------------- response size
def test_response_bodies_are_capped(servers):
    """A body over ``max_bytes`` is refused from its Content-Length before it is read, or, with no
    length, at the first byte past the limit, whichever read method asks for it; error statuses
    stay errors and a redirect is capped on the response it leads to."""
    inner, _ = servers
    limit = 1000
    inner.routes.update({
        "/exact": (200, b"a" * limit, 0.0),
        "/exact-unannounced": (200, b"b" * limit, 0.0, {"Content-Length": None}),
        "/big": (200, b"c" * 5000, 0.0),
        "/big-unannounced": (200, b"d" * 5000, 0.0, {"Content-Length": None}),
        "/missing-big": (404, b"e" * 5000, 0.0),
        "/to-big": (302, b"", 0.0, {"Location": inner.url("/big")}),
    })
    opener = netguard.guard_opener(allow_loopback=True, max_bytes=limit)
    assert opener.open(inner.url("/exact"), timeout=5).read() == b"a" * limit
    assert opener.open(inner.url("/exact-unannounced"), timeout=5).read() == b"b" * limit

    for path in ("/big", "/to-big"):
        with pytest.raises(OSError) as e:
            opener.open(inner.url(path), timeout=5)
        assert _refusal(e) == "file_too_large" and "announces 5,000 bytes" in str(e.value), path

    with opener.open(inner.url("/big-unannounced"), timeout=5) as r:  # img2dataset: r.read()
        with pytest.raises(OSError) as e:
            r.read()
    assert _refusal(e) == "file_too_large" and "more than 1,000 bytes" in str(e.value)
    with opener.open(inner.url("/big-unannounced"), timeout=5) as r:  # in pieces: the 4th passes the limit
        assert [len(r.read(300)) for _ in range(3)] == [300, 300, 300]
        with pytest.raises(OSError) as e:
            r.read(300)
    assert _refusal(e) == "file_too_large"
    with opener.open(inner.url("/big-unannounced"), timeout=5) as r:
        buf = bytearray(600)
        assert r.readinto(buf) == 600
        with pytest.raises(OSError) as e:
            r.readinto(buf)
    assert _refusal(e) == "file_too_large"

    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(inner.url("/missing-big"), timeout=5)
    assert e.value.code == 404
    # the control: without max_bytes the same opener reads it all
    assert len(netguard.guard_opener(allow_loopback=True).open(inner.url("/big-unannounced"), timeout=5).read()) == 5000


def test_guarded_call_caps_bodies_in_a_spawned_worker(servers, tmp_path):
    inner, _ = servers
    inner.routes["/big"] = (200, b"c" * 5000, 0.0, {"Content-Length": None})
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        with pytest.raises(OSError) as e:
            pool.apply(netguard.GuardedCall(urllib.request.urlretrieve, allow_loopback=True, max_bytes=1000),
                       (inner.url("/big"), str(tmp_path / "big")))
    assert _refusal(e) == "file_too_large"
    with pytest.raises(RuntimeError):  # one guard per process: a nested block may not change the cap
        with netguard.guarded(max_bytes=10):
            with netguard.guarded(max_bytes=20):
                pass


# --------------------------------------------------------------------------- decompression bombs
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_area_is_checked_from_the_header_before_decoding():
    from jobs.stages.download import MAX_IMAGE_AREA, AreaCheckedResizer, classify_error

    def never_decode(stream, *args):
        raise AssertionError("the bomb reached the decoder")

    for w, h in ((20_000, 20_000), (10_000, 10_000), (100_000, 100_000)):
        out = AreaCheckedResizer(never_decode, MAX_IMAGE_AREA)(io.BytesIO(huge_png_bytes(w, h)))
        assert out[:5] == (None,) * 5 and classify_error("failed_to_resize", out[5]) == "too_large", out
    assert "10000x10000 = 100,000,000 pixels" in AreaCheckedResizer(never_decode, MAX_IMAGE_AREA)(
        io.BytesIO(huge_png_bytes(10_000, 10_000)))[5]

    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (64, 48)).save(b, "PNG")
    seen = []
    inner = lambda stream, *a: seen.append(stream.read()) or ("img", 64, 48, 64, 48, None)  # noqa: E731
    assert AreaCheckedResizer(inner, MAX_IMAGE_AREA)(io.BytesIO(b.getvalue()))[5] is None
    assert seen == [b.getvalue()]  # the decoder gets the whole stream from the start
    assert AreaCheckedResizer(inner, 64 * 48 - 1)(io.BytesIO(b.getvalue()))[5].startswith("image area too large")
    # a format PIL does not parse goes to the decoder (OpenCV, under its own pixel limit)
    assert AreaCheckedResizer(inner, MAX_IMAGE_AREA)(io.BytesIO(b"not an image"))[5] is None


def test_img2dataset_is_wrapped_while_it_runs(monkeypatch):
    """The distributor hook the stage relies on exists in this img2dataset, the worker gets the
    guard and the area check, and everything is put back afterwards."""
    import inspect
    import os

    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    import importlib

    import img2dataset.downloader

    i2d_main = importlib.import_module("img2dataset.main")  # the package rebinds `main` to a function

    from jobs.stages.download import AreaCheckedResizer, DownloadConfig, _guarded_img2dataset

    assert "self.resizer = resizer" in inspect.getsource(img2dataset.downloader.Downloader.__init__)
    assert "urllib.request.urlopen(" in inspect.getsource(img2dataset.downloader.download_image)
    got = {}

    import img2dataset.distributor as i2d_dist
    from curation.orphans import ContextsDieWithParent

    original_get_context = i2d_dist.get_context

    def fake_distributor(processes_count, downloader, reader, subjob_size, max_shard_retry):
        got.update(worker=downloader, env=os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS"),
                   get_context=i2d_dist.get_context)

    class FakeDownloader:
        resizer = staticmethod(lambda stream: None)

    monkeypatch.setattr(i2d_main, "multiprocessing_distributor", fake_distributor)
    s = DownloadConfig(allow_loopback=True, max_image_area=1234)
    with _guarded_img2dataset(s):
        i2d_main.multiprocessing_distributor(1, FakeDownloader(), iter(()), 1, 0)
    worker = got["worker"]
    assert isinstance(worker, netguard.GuardedCall) and worker.allow_loopback and not worker.allow_private
    assert isinstance(worker.fn.resizer, AreaCheckedResizer) and worker.fn.resizer.max_area == 1234
    assert got["env"] == "1234"
    assert isinstance(got["get_context"], ContextsDieWithParent) and got["get_context"].parent_pid == os.getpid()
    assert i2d_dist.get_context is original_get_context
    assert i2d_main.multiprocessing_distributor is fake_distributor
    assert os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS") != "1234"


# --------------------------------------------------------------------------- the stage
def _complete(root: Path, name: str, summary: dict) -> None:
    from curation.rundir import RunDir

    d = RunDir(str(root)).stage(name)
    d.storage.makedirs(d.url)
    d.write_summary(summary)
    d.write_success(f"test-{name}")


def _balance_run(root: Path, urls: dict[str, str]) -> None:
    """A run directory whose balance stage is complete and holds ``{uid: url}``."""
    (root / "balance").mkdir(parents=True)
    uids = sorted(urls)
    pq.write_table(pa.table({"uid": uids, "url": [urls[u] for u in uids], "text": [f"a photo {u}" for u in uids],
                             "entry_ids": pa.array([[1]] * len(uids), pa.list_(pa.int32())),
                             "p_keep": [0.5] * len(uids)}), root / "balance" / "part-000000.parquet")
    _complete(root, "balance", {"in": len(uids), "out": len(uids), "rejected": {}})


def _config(root: Path, **values):
    from jobs.config import load_config

    base = {"run_dir": str(root), "download.image_size": 64, "download.processes": 1, "download.threads": 4,
            "download.timeout": 3, "download.samples_per_shard": 50}
    return load_config(None, values={**base, **values})


def _no_spark():
    raise AssertionError("the download stage with the local distributor needs no Spark")


def _tar_bytes(root: Path) -> bytes:
    out = b""
    for t in sorted((root / "download").glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    out += tf.extractfile(m).read()
    return out


def _attack_rows(tmp_path: Path) -> tuple[dict[str, str], dict[str, str], bytes]:
    """Rows every configuration refuses before fetching, with their reasons; a real local file."""
    secret = b"LOCAL-SECRET-" + bytes(np.random.default_rng(0).integers(65, 90, 32, dtype=np.uint8))
    path = tmp_path / "secret.jpg"
    path.write_bytes(secret)
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    urls = {"file": path.as_uri(), "data": f"data:image/png;base64,{png}",
            "ftp": "ftp://93.184.216.34/x.jpg", "metadata": "http://169.254.169.254/latest/meta-data/iam/",
            "js": "javascript:alert(1)", "nohost": "http:///x.jpg", "private": "http://10.0.0.1/x.jpg",
            "mapped": "http://[::ffff:169.254.169.254]/"}
    reasons = {"file": "bad_scheme", "data": "bad_scheme", "ftp": "bad_scheme", "metadata": "blocked_address",
               "js": "bad_scheme", "nohost": "bad_url", "private": "blocked_address", "mapped": "blocked_address"}
    return urls, reasons, secret


def test_refused_urls_become_rejects_and_never_reach_img2dataset(tmp_path, monkeypatch):
    from jobs.stages import download, run_stages
    from curation.rundir import RunDir
    from jobs.stages.base import StageContext

    def no_fetch(*args, **kwargs):
        raise AssertionError("img2dataset ran although every URL is refused")

    monkeypatch.setattr(download, "_run_img2dataset", no_fetch)
    urls, reasons, secret = _attack_rows(tmp_path)
    urls.update(loopback="http://127.0.0.1:9/x.jpg", decimal="http://2130706433:9/x.jpg",
                localhost="http://localhost:9/x.jpg", v6loop="http://[::1]:9/x.jpg")
    reasons.update(loopback="blocked_address", decimal="blocked_address", localhost="blocked_address",
                   v6loop="blocked_address")
    root = tmp_path / "run"
    _balance_run(root, urls)
    cfg = _config(root)
    assert cfg.download.allow_loopback is False and cfg.download.allow_private is False
    s = run_stages(cfg, ["download"], spark_factory=_no_spark, add_upstream=False)["download"]
    assert s["in"] == len(urls) == s["out"] + sum(s["rejected"].values()) and s["out"] == 0
    rej = {r["uid"]: r for r in pq.read_table(root / "rejects" / "download").to_pylist()}
    assert {u: r["reason"] for u, r in rej.items()} == reasons
    assert all(r["stage"] == "download" and r["detail"] for r in rej.values())
    assert "'file'" in rej["file"]["detail"] and "metadata" in rej["metadata"]["detail"]
    assert "allow_loopback" in rej["loopback"]["detail"]
    assert not list((root / "download").glob("*.tar"))
    # --retry-failed does not fetch refused URLs either
    s2 = download.STAGE.retry_failed(StageContext(cfg=cfg, run=RunDir(str(root))))
    assert {k: s2[k] for k in ("in", "out", "rejected")} == {k: s[k] for k in ("in", "out", "rejected")}


@pytest.mark.slow
@pytest.mark.parametrize("distributor", ["multiprocessing", pytest.param("pyspark", marks=pytest.mark.spark)])
def test_download_stage_guards_real_fetches(distributor, tmp_path, monkeypatch, request):
    """img2dataset in its own workers (a ``spawn`` process pool, or Spark executors) against a
    loopback server (allowed here): the pre-check refusals, redirects to refused targets caught in
    the workers, a 20000x20000 PNG refused from its header, bodies over ``max_bytes`` (with and
    without a Content-Length) refused, and ``--retry-failed`` fetching
    nothing refused. Redirect targets are ones an unguarded worker would reach on this machine
    (0.0.0.0 is this machine to Linux), never the network."""
    from curation.rundir import RunDir
    from jobs.stages import download, run_stages
    from jobs.stages.base import StageContext

    spark = request.getfixturevalue("spark") if distributor == "pyspark" else None
    srv = Server("127.0.0.1")
    try:
        port = srv.base.rsplit(":", 1)[1]
        rng = np.random.default_rng(3)
        srv.routes.update({
            "/ok.jpg": (200, _images.jpeg_bytes(_images.natural_image(rng, 120, 100)), 0.0),
            "/bomb.png": (200, huge_png_bytes(20_000, 20_000), 0.0),
            "/heavy.jpg": (200, _images.jpeg_bytes(_images.natural_image(rng, 120, 100)) + b"\0" * 300_000, 0.0),
            "/heavy-unannounced.jpg": (200, _images.jpeg_bytes(_images.natural_image(rng, 120, 100))
                                       + b"\0" * 300_000, 0.0, {"Content-Length": None}),
            "/secret": (200, b"SECRET-FROM-THIS-MACHINE", 0.0),
            "/to-zero": (302, b"", 0.0, {"Location": f"http://0.0.0.0:{port}/secret"}),
            "/to-ftp": (301, b"", 0.0, {"Location": f"ftp://127.0.0.1:{port}/secret"}),
        })
        urls, reasons, secret = _attack_rows(tmp_path)
        srv.routes["/to-file"] = (302, b"", 0.0, {"Location": urls["file"]})
        for name, path in (("ok", "/ok.jpg"), ("bomb", "/bomb.png"), ("to-zero", "/to-zero"), ("to-ftp", "/to-ftp"),
                           ("to-file", "/to-file"), ("heavy", "/heavy.jpg"),
                           ("heavy-unannounced", "/heavy-unannounced.jpg")):
            urls[name] = srv.url(path)
        reasons.update({"bomb": "too_large", "to-zero": "blocked_address", "to-ftp": "bad_scheme",
                        "to-file": "bad_scheme", "heavy": "file_too_large", "heavy-unannounced": "file_too_large"})
        root = tmp_path / "run"
        _balance_run(root, urls)
        # a JPEG padded past 300 kB weighs more than max_bytes (the PNG bomb is a few kB: its pixels are the threat)
        assert len(huge_png_bytes(20_000, 20_000)) < 250_000
        cfg = _config(root, **{"download.allow_loopback": True, "download.distributor": distributor,
                               "download.max_bytes": 250_000})
        s = run_stages(cfg, ["download"], spark=spark, spark_factory=_no_spark, add_upstream=False)["download"]
        assert s["in"] == len(urls) == s["out"] + sum(s["rejected"].values()) and s["out"] == 1, s
        rej = {r["uid"]: r for r in pq.read_table(root / "rejects" / "download").to_pylist()}
        assert {u: r["reason"] for u, r in rej.items()} == reasons, rej
        assert "redirect from" in rej["to-zero"]["detail"] and "unspecified" in rej["to-zero"]["detail"]
        assert "20000x20000" in rej["bomb"]["detail"] or "400000000" in rej["bomb"]["detail"], rej["bomb"]
        blob = _tar_bytes(root)
        assert blob and secret not in blob and b"SECRET-FROM-THIS-MACHINE" not in blob
        assert "/secret" not in srv.hits
        if distributor == "pyspark":
            return

        # a retry fetches only the failed rows that were handed to img2dataset, never a refused one
        fetched = []
        real_run = download._run_img2dataset

        def recording(input_dir, *args, **kwargs):
            for f in sorted(Path(input_dir).glob("*.parquet")):
                fetched.extend(pq.read_table(f, columns=["uid"]).column("uid").to_pylist())
            return real_run(input_dir, *args, **kwargs)

        monkeypatch.setattr(download, "_run_img2dataset", recording)
        s2 = download.STAGE.retry_failed(StageContext(cfg=cfg, run=RunDir(str(root))))
        assert sorted(fetched) == sorted(["bomb", "to-zero", "to-ftp", "to-file", "heavy", "heavy-unannounced"])
        assert s2["in"] == s["in"] and s2["out"] == 1 and s2["rejected"] == s["rejected"]
        assert secret not in _tar_bytes(root) and "/secret" not in srv.hits
    finally:
        srv.close()
