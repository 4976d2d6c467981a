"""Which URLs an image download may touch, and a urllib guard that holds to it while fetching.

Why: the URLs of a pool come from the open web, so they are attacker-controlled input. An
unrestricted fetcher reads local files (``file:///etc/passwd``), talks to services on the curation
machine (``127.0.0.1``), on the intranet (10/8, 172.16/12, 192.168/16, fc00::/7) or to a cloud
metadata service (``169.254.169.254``), and stores the answers in the dataset as "images".

Two layers, both built on one address rule (:func:`address_kind`):

* :class:`UrlPolicy` / :func:`check_url`: a check of the URL text before any fetch. Only ``http``
  and ``https``; a host that is an IP literal in any form the C resolver accepts (``127.1``,
  ``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) or a ``localhost`` name is checked without
  DNS; with ``resolve=True`` a host name is resolved (once per host per policy) and every address
  it resolves to must be allowed. A name that does not resolve is refused as ``unresolvable``.
* :func:`guard_opener` / :func:`install_guard` / :class:`GuardedCall`: a ``urllib`` opener for the
  processes that fetch. It has no ``file:``, ``ftp:`` or ``data:`` handler; each HTTP(S)
  connection resolves its host itself, checks every address and then connects to the address it
  checked, so neither a redirect to ``127.0.0.1`` nor a DNS answer that changes between a
  pre-check and the connection (rebinding) reaches a refused address; every redirect target is
  checked like a new URL. With ``max_bytes`` it also caps what a response may hand over: one that
  announces a longer body (``Content-Length``) is refused before its body is read, and one without
  a length stops at the first byte past the cap (``file_too_large``), so a worker never holds more
  than that in memory for one URL.

What the guard cannot cover, by construction:

* a request through an HTTP(S) proxy from the environment (``http_proxy``/``https_proxy``): the
  proxy resolves and connects, so only the check of the URL and of every redirect target (with
  DNS, just before the request) applies; a host that re-binds between that check and the
  proxy's own lookup is not caught, and what the proxy itself may reach is the proxy's policy;
* fetches that do not go through ``urllib.request.urlopen``'s installed opener (another HTTP
  client, or ``urlopen(..., context=...)``, which builds a fresh opener).
"""
from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REASONS = ("bad_scheme", "bad_url", "blocked_address", "unresolvable", "file_too_large")
SCHEMES = ("http", "https")

# Cloud instance-metadata endpoints hand out credentials: refused whatever the switches say.
# 169.254.169.254: AWS, GCP, Azure, OCI; 169.254.170.2: AWS ECS task credentials;
# fd00:ec2::254: AWS IMDS over IPv6 (inside fc00::/7, which allow_private would let through);
# 100.100.100.200: Alibaba Cloud (inside 100.64/10, which allow_private would let through).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))

# What allow_private lets through: RFC 1918, shared address space (RFC 6598; carrier NAT and
# overlay networks put intranet mirrors there), unique-local IPv6 and deprecated site-local IPv6.
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"))

# Names that mean this machine without asking DNS (RFC 6761 reserves *.localhost; Debian's
# /etc/hosts adds the ip6-* names).
LOOPBACK_NAMES = frozenset(("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"))

_HOST_CHARS = re.compile(r"[a-z0-9_.\-]+")
_NUMERIC_V4 = re.compile(r"[0-9a-fx.]+")


class GuardError(OSError):
    """A fetch the policy refused. An ``OSError`` so that urllib and img2dataset treat it as a
    failed download of that one URL; ``str()`` carries a marker that :func:`reason_of` reads back."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"refused by netguard ({reason}): {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across process pools
        return (GuardError, (self.reason, self.detail))


_MARKER = re.compile(r"refused by netguard \((\w+)\)")


def reason_of(message: str | None) -> str | None:
    """The policy reason inside an error message (urllib wraps errors in its own text), or None."""
    m = _MARKER.search(message or "")
    return m.group(1) if m else None


# --------------------------------------------------------------------------- addresses
def address_kind(ip: IPAddress) -> str | None:
    """None for a publicly routable address, else what it is: ``loopback``, ``private``,
    ``link-local``, ``multicast``, ``reserved``, ``unspecified``, ``cloud metadata service``,
    ``special-purpose`` (documentation, benchmarking, ``0/8``, ...)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        # Addresses that carry an IPv4 address are judged by it: ::ffff:127.0.0.1 is 127.0.0.1
        # to the kernel; 6to4 and NAT64 forms lead to the embedded address through a relay.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_kind(embedded)
    if ip in METADATA_ADDRESSES:
        return "cloud metadata service"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in n for n in PRIVATE_NETWORKS):
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "special-purpose"
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one in any form the C resolver accepts (inet_aton's
    ``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1``; IPv6 with a zone), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def resolve(host: str) -> list[IPAddress]:
    """Every address ``host`` resolves to (what a TCP connection could use). Tests replace it."""
    infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


# --------------------------------------------------------------------------- the policy
class UrlPolicy:
    """The URL policy with its switches and a per-host cache of verdicts (a batch of URLs holds
    thousands per host: each host is parsed and resolved once). Thread-safe enough for a thread
    pool: the cache is a dict written whole per host."""

    def __init__(self, allow_loopback: bool = False, allow_private: bool = False, *, resolve: bool = True) -> None:
        self.allow_loopback = bool(allow_loopback)
        self.allow_private = bool(allow_private)
        self.resolve = bool(resolve)
        self._hosts: dict[str, tuple[str, str] | None] = {}

    def refusal(self, ip: IPAddress) -> str | None:
        """None if connecting to ``ip`` is allowed, else its kind (``loopback``, ...)."""
        kind = address_kind(ip)
        if kind is None or (kind == "loopback" and self.allow_loopback) or (kind == "private" and self.allow_private):
            return None
        return kind

    @staticmethod
    def _address_detail(host: str, ip: IPAddress, kind: str, resolved: bool = False) -> str:
        what = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"
        if str(ip) == host:
            text = f"{ip} is {what}"
        else:
            text = f"host {host} {'resolves to' if resolved else 'means'} {ip}, {what}"
        switch = {"loopback": "; allow_loopback lets it through",
                  "private": "; allow_private lets it through"}.get(kind, "")
        return text + switch

    def explain(self, url: Any) -> tuple[str, str] | None:
        """None if ``url`` may be fetched, else ``(reason, detail)``: the reason is one of
        :data:`REASONS`, the detail says what was refused and why."""
        if not isinstance(url, str) or not url.strip():
            return "bad_scheme", "empty URL"
        text = url.strip()
        m = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):", text)
        if not m:
            return "bad_scheme", f"no scheme in {_short(text)!r}; only http and https are fetched"
        scheme = m.group(1).lower()
        if scheme not in SCHEMES:
            return "bad_scheme", f"scheme {scheme!r} is not fetched; only http and https are"
        if any(ord(c) < 0x21 or c == "\x7f" for c in text):
            return "bad_url", f"{_short(text)!r} holds spaces or control characters"
        try:
            parts = urlsplit(text)
            parts.port  # raises on a port that is not a number in 0-65535
        except ValueError as err:
            return "bad_url", f"cannot parse {_short(text)!r}: {err}"
        host = parts.hostname
        if not host:
            return "bad_url", f"no host in {_short(text)!r}"
        return self._host_verdict(unquote(host).lower())  # urllib unquotes the host it connects to

    def _host_verdict(self, host: str) -> tuple[str, str] | None:
        if host in self._hosts:
            return self._hosts[host]
        verdict = self._judge_host(host)
        self._hosts[host] = verdict
        return verdict

    def _judge_host(self, host: str) -> tuple[str, str] | None:
        ip = parse_ip(host)
        if ip is None:
            if not host.isascii():
                try:
                    host = host.encode("idna").decode("ascii")
                except UnicodeError:
                    return "bad_url", f"host {host!r} is not a valid internationalised name"
            if not _HOST_CHARS.fullmatch(host):
                return "bad_url", f"host {host!r} is not a host name or an IP address"
            name = host.rstrip(".")
            if name in LOOPBACK_NAMES or name.endswith(".localhost"):
                if self.allow_loopback:
                    return None
                return "blocked_address", self._address_detail(host, ipaddress.ip_address("127.0.0.1"), "loopback")
            if not self.resolve:
                return None  # the guard checks the address when the fetch connects
            try:
                addresses = resolve(host)
            except (OSError, UnicodeError) as err:
                return "unresolvable", f"host {host} does not resolve: {err}"
            if not addresses:
                return "unresolvable", f"host {host} resolves to no address"
        else:
            addresses = [ip]
        for a in addresses:
            kind = self.refusal(a)
            if kind is not None:
                return "blocked_address", self._address_detail(host, a, kind, resolved=ip is None)
        return None

    def check(self, url: Any) -> str | None:
        """None if ``url`` may be fetched, else the short reason."""
        verdict = self.explain(url)
        return None if verdict is None else verdict[0]

    def require(self, url: Any) -> None:
        """Raise :class:`GuardError` if ``url`` may not be fetched."""
        verdict = self.explain(url)
        if verdict is not None:
            raise GuardError(*verdict)

    # ------------------------------------------------------------------ connect time
    def create_connection(self, address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,
                          source_address: tuple[str, int] | None = None, *args: Any, **kwargs: Any) -> socket.socket:
        """``socket.create_connection`` that refuses a refused address: the host is resolved here,
        every address checked, and the socket connects to the address that was checked, so what
        the check saw is what the connection reaches."""
        host, port = address[0], address[1]
        ip = parse_ip(host)
        if ip is not None:
            infos = socket.getaddrinfo(str(ip), port, 0, socket.SOCK_STREAM)
        else:
            name = host.rstrip(".").lower()
            if (name in LOOPBACK_NAMES or name.endswith(".localhost")) and not self.allow_loopback:
                raise GuardError("blocked_address",
                                 self._address_detail(host, ipaddress.ip_address("127.0.0.1"), "loopback"))
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        for info in infos:
            a = ipaddress.ip_address(info[4][0])
            kind = self.refusal(a)
            if kind is not None:
                raise GuardError("blocked_address", self._address_detail(host, a, kind, resolved=ip is None))
        err: OSError | None = None
        for family, socktype, proto, _, sockaddr in infos:
            sock = None
            try:
                sock = socket.socket(family, socktype, proto)
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                err = e
                if sock is not None:
                    sock.close()
        raise err if err is not None else OSError(f"getaddrinfo returned no address for {host}")


def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n] + "..."


def check_url(url: Any, allow_loopback: bool = False, allow_private: bool = False, *,
              resolve: bool = True) -> str | None:
    """None for a URL that may be fetched, else the short reason: ``bad_scheme`` (anything but
    http/https), ``bad_url`` (unparsable, no host), ``blocked_address`` (loopback, private,
    link-local, multicast, reserved, unspecified or metadata address, by literal, ``localhost``
    name or DNS), ``unresolvable`` (with ``resolve``, a host name that DNS does not know). For
    many URLs keep one :class:`UrlPolicy`: it resolves each host once."""
    return UrlPolicy(allow_loopback, allow_private, resolve=resolve).check(url)


# --------------------------------------------------------------------------- the urllib guard
class _GuardedConnections:
    """Mixin for urllib's HTTP(S) handlers: every connection is checked at connect time."""

    policy: UrlPolicy
    syntax: UrlPolicy

    def do_open(self, http_class: Callable[..., http.client.HTTPConnection], req: urllib.request.Request,
                **kwargs: Any) -> http.client.HTTPResponse:
        proxied = req.has_proxy() or bool(getattr(req, "_tunnel_host", None))
        if proxied:
            # The proxy connects for us: the URL (with DNS) is all that can be checked here.
            self.policy.require(req.full_url)
        else:
            # Scheme and host syntax only: the connection resolves the host and checks each
            # address itself, so a lookup here would be a second one that decides nothing.
            self.syntax.require(req.full_url)
        policy = self.policy

        def connection(*args: Any, **kw: Any) -> http.client.HTTPConnection:
            conn = http_class(*args, **kw)
            if not proxied:
                if not hasattr(conn, "_create_connection"):  # http.client changed: fail closed
                    raise GuardError("blocked_address", f"{type(conn).__name__} has no _create_connection hook; "
                                                        "netguard cannot check where it connects")
                conn._create_connection = policy.create_connection
            return conn

        return super().do_open(connection, req, **kwargs)  # type: ignore[misc]


class _GuardedHTTPHandler(_GuardedConnections, urllib.request.HTTPHandler):
    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.syntax = UrlPolicy(policy.allow_loopback, policy.allow_private, resolve=False)


class _GuardedHTTPSHandler(_GuardedConnections, urllib.request.HTTPSHandler):
    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.syntax = UrlPolicy(policy.allow_loopback, policy.allow_private, resolve=False)


class _GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Every redirect target is checked like a new URL (scheme, host, addresses with DNS)."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy

    def _refuse(self, req: urllib.request.Request, newurl: str) -> None:
        verdict = self.policy.explain(newurl)
        if verdict is not None:
            reason, detail = verdict
            raise GuardError(reason, f"redirect from {_short(req.full_url)} to {_short(newurl)}: {detail}")

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 (urllib's signature)
        # Checked before urllib's own handling, so that every refused target (file:, ftp:, an
        # address) gets the policy's reason rather than urllib's generic redirect error.
        location = headers.get("location") or headers.get("uri")
        if location:
            try:
                try:
                    target = urljoin(req.full_url, location.strip())
                except ValueError:
                    target = location  # unparsable: explain() names it bad_url
                self._refuse(req, target)
            except GuardError:
                fp.close()
                raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        self._refuse(req, newurl)  # the exact URL urllib will open next
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _RefuseOtherSchemes(urllib.request.UnknownHandler):
    """The opener has no file/ftp/data handlers; anything else ends here with a clear refusal."""

    def unknown_open(self, req: urllib.request.Request) -> None:
        raise GuardError("bad_scheme", f"scheme {req.type!r} is not fetched; only http and https are")


class _SizeLimit(urllib.request.BaseHandler):
    """Every HTTP(S) response hands over at most ``max_bytes`` of body (see the module doc). It runs
    after urllib's error processor, so an error status stays that error and a redirect is capped
    on the response it leads to."""

    handler_order = 1001

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)

    def http_response(self, req: urllib.request.Request, response: http.client.HTTPResponse):
        if getattr(response, "_netguard_capped", False):  # a redirect's target, capped when it was opened
            return response
        limit = self.max_bytes
        announced = (response.headers.get("Content-Length") or "").strip()
        if announced.isdigit() and int(announced) > limit:
            response.close()
            raise GuardError("file_too_large", f"{_short(req.full_url)} announces {int(announced):,} bytes, over "
                                               f"the limit of {limit:,} (download.max_bytes)")
        _cap_body(response, limit, req.full_url)
        return response

    https_response = http_response


def _cap_body(response: http.client.HTTPResponse, limit: int, url: str) -> None:
    """Make ``response``'s read methods raise ``file_too_large`` once the body passes ``limit``
    bytes; a plain ``read()`` asks for one byte more than is left, never for the whole body."""
    seen = 0

    def over(n: int) -> None:
        nonlocal seen
        seen += n
        if seen > limit:
            response.close()
            raise GuardError("file_too_large", f"{_short(url)} sends more than {limit:,} bytes (download.max_bytes)")

    def counted(method: Callable[..., bytes]) -> Callable[..., bytes]:
        def read(size: int | None = -1, *args: Any) -> bytes:
            if size is None or size < 0:
                size = limit - seen + 1
            data = method(size, *args)
            over(len(data))
            return data
        return read

    def readinto(buffer: Any) -> int:
        n = real_readinto(buffer)
        over(n)
        return n

    response._netguard_capped = True
    real_readinto = response.readinto
    response.read = counted(response.read)
    response.read1 = counted(response.read1)
    response.readline = counted(response.readline)
    response.readinto = readinto


def guard_opener(allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener that fetches only what the policy allows, and with ``max_bytes`` no response
    body longer than that (see the module doc)."""
    policy = UrlPolicy(allow_loopback, allow_private, resolve=True)
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _RefuseOtherSchemes(), _GuardedHTTPHandler(policy),
                    _GuardedHTTPSHandler(policy), urllib.request.HTTPDefaultErrorHandler(),
                    _GuardedRedirectHandler(policy), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    if max_bytes is not None:
        opener.add_handler(_SizeLimit(max_bytes))
    return opener


def install_guard(allow_loopback: bool = False, allow_private: bool = False,
                  max_bytes: int | None = None) -> urllib.request.OpenerDirector:
    """Make ``urllib.request.urlopen`` in this process fetch only what the policy allows, for good
    (for a process that only downloads). Returns the installed opener."""
    opener = guard_opener(allow_loopback, allow_private, max_bytes)
    urllib.request.install_opener(opener)
    return opener


_lock = threading.Lock()
_active: dict[str, Any] = {"depth": 0, "flags": None, "previous": None, "opener": None}


@contextmanager
def guarded(allow_loopback: bool = False, allow_private: bool = False,
            max_bytes: int | None = None) -> Iterator[urllib.request.OpenerDirector]:
    """The guard installed for the duration of the block, then the previous opener back (a reused
    worker process, such as a Spark executor's Python worker, keeps its own opener for other
    work). Nested blocks share one guard; nesting with other switches is an error, not a mix."""
    flags = (bool(allow_loopback), bool(allow_private), None if max_bytes is None else int(max_bytes))
    with _lock:
        if _active["depth"] == 0:
            _active["previous"] = getattr(urllib.request, "_opener", None)
            _active["flags"] = flags
            _active["opener"] = install_guard(*flags)
        elif _active["flags"] != flags:
            raise RuntimeError(f"netguard is active with allow_loopback, allow_private, max_bytes = "
                               f"{_active['flags']}; cannot also run with {flags} in this process")
        _active["depth"] += 1
        opener = _active["opener"]
    try:
        yield opener
    finally:
        with _lock:
            _active["depth"] -= 1
            if _active["depth"] == 0:
                urllib.request.install_opener(_active["previous"])
                _active.update(previous=None, flags=None, opener=None)


class GuardedCall:
    """A picklable wrapper: ``fn(*args)`` runs with the guard installed in whichever process it
    lands in. Process pools started with ``spawn`` and Spark executors do not inherit an opener
    installed in the driver, but they unpickle this and install the guard themselves."""

    def __init__(self, fn: Callable[..., Any], allow_loopback: bool = False, allow_private: bool = False,
                 max_bytes: int | None = None) -> None:
        self.fn = fn
        self.allow_loopback = bool(allow_loopback)
        self.allow_private = bool(allow_private)
        self.max_bytes = None if max_bytes is None else int(max_bytes)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with guarded(self.allow_loopback, self.allow_private, self.max_bytes):
            return self.fn(*args, **kwargs)
