"""``perspective``: Google's Perspective API (TOXICITY), with a rate limit,
retries, a deadline per request, a wait budget per job and an on-disk cache.

- The API key comes from ``api_key_file`` or the environment variable named by
  ``api_key_env`` (which must be a variable name, not a key). It travels only
  in the ``x-goog-api-key`` header (never in the URL), and is never printed,
  logged, cached or put in an error message.
- Requests start at most ``qps`` per second (all threads together). Each
  request has ``timeout`` seconds in total (connect, send, the whole answer):
  a server that trickles its answer is cut off at the deadline. 429 and 5xx
  answers, network errors and deadline hits are retried up to
  ``max_retries`` times with exponential backoff and jitter, or after the
  ``Retry-After`` the server asks for; all those waits of one job together
  stay within ``max_total_wait_s`` (else the job stops, naming it). Any other
  4xx stops the run with the status and the API's message.
- Every score is checked (a number in [0, 1], else an error naming the
  text's index) and written to a sqlite cache (``cache``) as soon as it
  arrives, keyed by a SHA-256 of the endpoint URL, every request setting and
  the text (the text itself is not stored), so a rerun or a crashed run
  re-sends nothing already scored, and a changed endpoint or setting never
  gets old scores.
- Empty or whitespace-only texts score 0.0 without a request (the API rejects
  empty comments).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import http.client
import ipaddress
import json
import logging
import math
import os
import random
import re
import socket
import sqlite3
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ...errors import DetoxflowError
from .base import Scorer

log = logging.getLogger(__name__)

DEFAULT_URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
ATTRIBUTE = "TOXICITY"
REDACTED = "[REDACTED]"
# what the schema allows for api_key_env: an environment-variable name in the POSIX
# convention (upper case). A Google API key ("AIza" + 35 characters) never fits.
ENV_VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _key(name: str) -> str:
    return f"evaluation.toxicity.perspective.{name}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: urllib would forward the key header to the new host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None


def _shutdown(sock: socket.socket) -> None:
    """Cut a socket off in both directions; a thread blocked reading it wakes up.

    ``socket.socket.shutdown`` acts on the file descriptor, also under a TLS
    socket (whose own ``shutdown`` would first tear down its TLS state)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class RequestDeadline:
    """The total time one request may take.

    urllib's ``timeout`` bounds each socket operation, so a server that sends
    one byte every few seconds could hold a request for ever. A timer shuts the
    request's sockets down when the time is up; the connection classes below
    register every socket they open (the TCP socket, then the TLS socket before
    its handshake) with :meth:`watch`.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "RequestDeadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _deadline_connection(base: type, deadline: RequestDeadline) -> type:
    """``base`` (HTTPConnection or HTTPSConnection) whose sockets ``deadline`` watches."""

    class DeadlineConnection(base):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            create = self._create_connection
            self._create_connection = lambda *a, **kw: deadline.watch(create(*a, **kw))

        if issubclass(base, http.client.HTTPSConnection):
            def connect(self) -> None:
                # HTTPSConnection.connect, with the TLS socket watched before its handshake
                http.client.HTTPConnection.connect(self)
                hostname = self._tunnel_host or self.host
                self.sock = deadline.watch(self._context.wrap_socket(
                    self.sock, server_hostname=hostname, do_handshake_on_connect=False))
                self.sock.do_handshake()

    return DeadlineConnection


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_deadline_connection(http.client.HTTPConnection, req.deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_deadline_connection(http.client.HTTPSConnection, req.deadline), req,
                            context=self._context)


class RateLimiter:
    """Spaces request starts at least 1/qps seconds apart, across threads."""

    def __init__(self, qps: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not qps > 0:
            raise DetoxflowError(f"{_key('qps')} must be > 0, got {qps}")
        self.interval = 1.0 / float(qps)
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class ScoreCache:
    """sqlite table key -> score; each write is committed at once."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=120,
                                       isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, attribute TEXT NOT NULL, "
                "value REAL NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise DetoxflowError(f"{_key('cache')} = {path}: cannot open the sqlite cache ({exc})") from None

    def get_many(self, keys: Iterable[str]) -> dict[str, float]:
        keys = list(keys)
        found: dict[str, float] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self._db.execute(
                f"SELECT key, value FROM scores WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            found.update({k: float(v) for k, v in rows})
        return found

    def put(self, key: str, attribute: str, value: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", (key, attribute, value, time.time()))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def cache_key(text: str, request: Mapping[str, Any]) -> str:
    """SHA-256 of ``text`` and ``request`` (the endpoint URL and every request field but
    the text): a score is reused only for the same question to the same server."""
    settings = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{settings}\n{text}".encode("utf-8")).hexdigest()


def _is_loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _checked_env_name(name: Any) -> str:
    """``api_key_env`` if it is an environment-variable name. The message never repeats
    the value: a key pasted here by mistake must not end up in a log."""
    if not isinstance(name, str) or not ENV_VAR_NAME.match(name):
        raise DetoxflowError(
            f"{_key('api_key_env')} must be the NAME of an environment variable (upper-case letters, digits "
            f"and _, not starting with a digit, e.g. PERSPECTIVE_API_KEY), and the value given is not one (it is not "
            f"repeated here in case it is a key). Put the key in that variable (export PERSPECTIVE_API_KEY=...) "
            f"or in a file named by {_key('api_key_file')}, never in the config"
        )
    return name


class PerspectiveScorer(Scorer):
    name = "perspective"
    reports_progress = True
    option_keys = ("api_key_file", "api_key_env", "url", "qps", "max_retries", "timeout", "max_total_wait_s",
                   "languages", "cache")

    def __init__(
        self,
        *,
        api_key_file: str | None = None,
        api_key_env: str = "PERSPECTIVE_API_KEY",
        url: str = DEFAULT_URL,
        qps: float = 1.0,
        max_retries: int = 8,
        timeout: float = 30.0,
        max_total_wait_s: float = 600.0,
        languages: Sequence[str] = ("en",),
        cache: str | None = "results/cache/perspective.sqlite",
        batch_size: int = 64,
        progress: bool = True,
        # not config keys: for tests and programmatic use
        api_key: str | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 64.0,
        max_workers: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(batch_size=batch_size, progress=progress)
        self._api_key = self._resolve_key(api_key, api_key_file, _checked_env_name(api_key_env))
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("https", "http") or not parsed.netloc:
            raise DetoxflowError(f"{_key('url')} = {url}: not an http(s) URL")
        if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
            raise DetoxflowError(
                f"{_key('url')} = {url}: plain http would send the API key unencrypted; use https"
            )
        if parsed.query and "key=" in parsed.query:
            raise DetoxflowError(f"{_key('url')}: do not put the API key in the URL; use api_key_env or api_key_file")
        if int(max_retries) < 0:
            raise DetoxflowError(f"{_key('max_retries')} must be >= 0, got {max_retries}")
        if not float(timeout) > 0:
            raise DetoxflowError(f"{_key('timeout')} must be > 0, got {timeout}")
        if not float(max_total_wait_s) >= 0:
            raise DetoxflowError(f"{_key('max_total_wait_s')} must be >= 0, got {max_total_wait_s}")
        if isinstance(languages, str) or not languages or not all(isinstance(x, str) and x for x in languages):
            raise DetoxflowError(f"{_key('languages')} must be a non-empty list of language codes, e.g. [en]")
        self.url = url
        self.qps = float(qps)
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.max_total_wait_s = float(max_total_wait_s)
        self.languages = list(languages)
        # every request field but the text, and where it goes: the cache key covers all of it
        self._settings = {"languages": self.languages, "requestedAttributes": {ATTRIBUTE: {}}, "doNotStore": True}
        self._cache_scope = {"url": url, **self._settings}
        self.waited_s = 0.0  # retry waits so far (Retry-After and backoff), all threads together
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_workers = int(max_workers) if max_workers else min(8, max(1, math.ceil(self.qps)))
        self._sleep = sleep
        self._limiter = RateLimiter(self.qps, sleep=sleep)
        self._cache = ScoreCache(cache)
        self._opener = urllib.request.build_opener(_NoRedirect, _DeadlineHTTPHandler, _DeadlineHTTPSHandler)
        self._stop = threading.Event()
        self.requests_sent = 0  # HTTP requests, retries included
        self.texts_requested = 0  # texts scored by the API (not from the cache)
        self._count_lock = threading.Lock()
        log.info("perspective: %s, qps %.3g, %d worker(s), cache %s (%d scores)", url, self.qps,
                 self.max_workers, cache or "(memory only)", len(self._cache))

    # -- key handling ---------------------------------------------------------------
    @staticmethod
    def _resolve_key(api_key: str | None, api_key_file: str | None, api_key_env: str) -> str:
        source = "api_key argument"
        key = api_key
        if key is None and api_key_file:
            path = Path(api_key_file).expanduser()
            if not path.is_file():
                raise DetoxflowError(f"{_key('api_key_file')} = {api_key_file}: file not found")
            try:
                mode = path.stat().st_mode
                if mode & (stat.S_IRGRP | stat.S_IROTH):
                    log.warning("perspective: %s is readable by other users; chmod 600 it", path)
            except OSError:
                pass
            key = path.read_text(encoding="utf-8").strip()
            source = f"{_key('api_key_file')} ({api_key_file})"
        elif key is None:
            key = os.environ.get(api_key_env, "").strip()
            source = f"environment variable {api_key_env}"
            if not key:
                raise DetoxflowError(
                    f"perspective needs an API key: export {api_key_env}=<key> (the variable named by "
                    f"{_key('api_key_env')}) or set {_key('api_key_file')} to a file holding only the key"
                )
        key = (key or "").strip()
        if not key:
            raise DetoxflowError(f"perspective: the API key from {source} is empty")
        if any(c.isspace() or ord(c) < 32 for c in key):
            raise DetoxflowError(f"perspective: the API key from {source} contains whitespace or control characters")
        return key

    def _redact(self, text: str) -> str:
        key = self._api_key
        for form in {key, urllib.parse.quote(key, safe="")}:
            text = text.replace(form, REDACTED)
        return text

    # -- one request ------------------------------------------------------------------
    def _body(self, text: str) -> bytes:
        return json.dumps({"comment": {"text": text}, **self._settings}).encode("utf-8")

    def _delay(self, attempt: int, retry_after: str | None) -> tuple[float, str]:
        """Seconds to wait before the next attempt, and why: the server's
        ``Retry-After`` (seconds or an HTTP date) when it sent one, else backoff."""
        if retry_after:
            seconds = None
            try:
                seconds = float(retry_after)
            except ValueError:
                try:
                    seconds = parsedate_to_datetime(retry_after).timestamp() - time.time()
                except (TypeError, ValueError, IndexError, OverflowError):
                    seconds = None
            if seconds is not None and math.isfinite(seconds):
                return max(0.0, seconds), "the server's Retry-After"
        cap = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return cap / 2 + random.uniform(0, cap / 2), "backoff"

    def _reserve_wait(self, seconds: float, why: str, last: str) -> None:
        """Count a retry wait against ``max_total_wait_s``; refuse one that would exceed it."""
        with self._count_lock:
            if self.waited_s + seconds > self.max_total_wait_s:
                raise DetoxflowError(
                    f"Perspective API at {self._redact(self.url)}: {last}; waiting {seconds:.1f} s more "
                    f"({why}) would take this job's retry waits past {_key('max_total_wait_s')} = "
                    f"{self.max_total_wait_s:g} s ({self.waited_s:.1f} s waited so far). Lower {_key('qps')}, "
                    f"raise {_key('max_total_wait_s')} or rerun later; scores so far are cached"
                )
            self.waited_s += seconds

    def _api_message(self, raw: bytes) -> str:
        text = raw.decode("utf-8", "replace")
        try:
            err = json.loads(text).get("error", {})
            message = err.get("message") or text
            status = err.get("status")
            if status:
                message = f"{status}: {message}"
        except (ValueError, AttributeError):
            message = text
        message = " ".join(message.split())[:500]
        return self._redact(message)

    def _post(self, body: bytes) -> tuple[int, str | None, bytes]:
        """One POST within the total deadline: (HTTP status, Retry-After, answer body).

        Network errors raise (OSError family); a request cut off at the
        deadline raises TimeoutError, also where the cut left a body that looks
        complete (an answer without Content-Length ends at the cut)."""
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8",
            "x-goog-api-key": self._api_key,
        })
        deadline = RequestDeadline(self.timeout)
        req.deadline = deadline
        with self._count_lock:
            self.requests_sent += 1
        try:
            with deadline:
                try:
                    with self._opener.open(req, timeout=self.timeout) as resp:
                        status, retry_after, payload = resp.status, None, resp.read()
                except urllib.error.HTTPError as exc:
                    with exc:
                        status = exc.code
                        retry_after = exc.headers.get("Retry-After") if exc.headers is not None else None
                        try:
                            payload = exc.read()
                        except (OSError, http.client.HTTPException):
                            payload = b""
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            if deadline.expired:
                raise TimeoutError(self._deadline_message()) from None
            raise
        if deadline.expired:
            raise TimeoutError(self._deadline_message())
        return status, retry_after, payload

    def _deadline_message(self) -> str:
        return f"no complete answer within {_key('timeout')} = {self.timeout:g} s"

    def _request(self, text: str, index: int) -> float:
        """The score of ``text`` (input position ``index``), with retries."""
        body = self._body(text)
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise DetoxflowError("perspective: stopped")
            self._limiter.wait()
            retry_after = None
            try:
                status, retry_after, payload = self._post(body)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc
                last = self._redact(f"{type(exc).__name__}: {reason}")
            else:
                if 200 <= status < 300:
                    return self._parse(payload, index)
                message = self._api_message(payload)
                if status == 429 or 500 <= status < 600:
                    last = f"HTTP {status} ({message})"
                else:
                    hint = ""
                    if status in (401, 403):
                        hint = (f"; check the API key ({_key('api_key_env')} / {_key('api_key_file')}) and that "
                                f"the Perspective Comment Analyzer API is enabled for its Google Cloud project")
                    raise DetoxflowError(
                        f"Perspective API answered HTTP {status} at {self._redact(self.url)}: {message}{hint}"
                    )
            if attempt < self.max_retries:
                delay, why = self._delay(attempt, retry_after)
                self._reserve_wait(delay, why, last)
                log.debug("perspective: %s; retry %d/%d in %.2f s", last, attempt + 1, self.max_retries, delay)
                self._sleep(delay)
        raise DetoxflowError(
            f"Perspective API at {self._redact(self.url)}: giving up after {self.max_retries + 1} attempts; "
            f"last: {last}. Lower {_key('qps')} or raise {_key('max_retries')}; scores so far are cached"
        )

    def _parse(self, payload: bytes, index: int) -> float:
        try:
            data = json.loads(payload.decode("utf-8"))
            value = float(data["attributeScores"][ATTRIBUTE]["summaryScore"]["value"])
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            snippet = self._redact(payload[:300].decode("utf-8", "replace"))
            raise DetoxflowError(
                f"Perspective API at {self._redact(self.url)}: unexpected answer for text #{index} (no "
                f"attributeScores.{ATTRIBUTE}.summaryScore.value: {exc}): {snippet}"
            ) from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise DetoxflowError(
                f"Perspective API at {self._redact(self.url)}: text #{index} scored {value}, not a probability "
                f"in [0, 1]; nothing was cached for it (is {_key('url')} the Perspective API?)"
            )
        with self._count_lock:
            self.texts_requested += 1
        return value

    # -- batches ------------------------------------------------------------------------
    def _score_batch(self, texts: Sequence[str]) -> Sequence[float]:
        out: list[float | None] = [None] * len(texts)
        keys = [cache_key(t, self._cache_scope) for t in texts]
        found = self._cache.get_many(set(keys))
        pending: dict[str, list[int]] = {}
        first_text: dict[str, str] = {}
        done_now = 0
        for i, (text, key) in enumerate(zip(texts, keys)):
            if not text.strip():
                out[i] = 0.0
                done_now += 1
            elif key in found:
                out[i] = found[key]
                done_now += 1
            else:
                pending.setdefault(key, []).append(i)
                first_text.setdefault(key, text)
        self._advance(done_now)
        if not pending:
            return out  # type: ignore[return-value]

        error: BaseException | None = None
        pool = cf.ThreadPoolExecutor(max_workers=min(self.max_workers, len(pending)),
                                     thread_name_prefix="perspective")
        try:
            positions = self._batch_indices or range(len(texts))  # input index of each text, for messages
            futures = {pool.submit(self._request, first_text[key], positions[pending[key][0]]): key
                       for key in pending}
            for fut in cf.as_completed(futures):
                if fut.cancelled():
                    continue
                key = futures[fut]
                try:
                    value = fut.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below, after caching the rest
                    if error is None:
                        error = exc
                        self._stop.set()
                        for other in futures:
                            other.cancel()
                    continue
                self._cache.put(key, ATTRIBUTE, value)
                for i in pending[key]:
                    out[i] = value
                self._advance(len(pending[key]))
        except BaseException:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._stop.clear()
        if error is not None:
            raise error
        return out  # type: ignore[return-value]

    def close(self) -> None:
        cache = getattr(self, "_cache", None)
        if cache is not None:
            cache.close()
            self._cache = None
