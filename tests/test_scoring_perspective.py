"""The Perspective client against a local HTTP server that misbehaves before answering."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from detoxflow.errors import DetoxflowError
from detoxflow.evaluation.scoring import build_scorer
from detoxflow.evaluation.scoring.perspective import RateLimiter

KEY = "AIzaSy-TEST-k3y-0123456789abcdef"


def value_of(text: str) -> float:
    """What the fake API scores a text: a deterministic function of the text."""
    return int(hashlib.md5(text.encode()).hexdigest()[:6], 16) / 0xFFFFFF


class FakePerspective:
    """Answers 429 then 500 before the real answer for every text (``flaky``);
    403 (echoing the key, as a careless server might) for a wrong key;
    400 for texts listed in ``bad``; counts everything."""

    def __init__(self):
        self.attempts = Counter()
        self.successes = Counter()
        self.requests = 0
        self.flaky = True
        self.retry_after = "0"
        self.bad = set()
        self.always_503 = False
        self.problems = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, obj, headers=()):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["comment"]["text"]
                with fake.lock:
                    fake.requests += 1
                    fake.attempts[text] += 1
                    n = fake.attempts[text]
                    if KEY in self.path:
                        fake.problems.append("key in URL")
                    if body.get("doNotStore") is not True or body.get("languages") != ["en"] \
                            or body.get("requestedAttributes") != {"TOXICITY": {}}:
                        fake.problems.append(f"bad body {body}")
                if self.headers.get("x-goog-api-key") != KEY:
                    return self._send(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                                      "message": f"API key not valid: {self.headers.get('x-goog-api-key')}"}})
                if fake.always_503:
                    return self._send(503, {"error": {"code": 503, "message": "backend unavailable"}})
                if text in fake.bad:
                    return self._send(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                      "message": "Comment text too long"}})
                if fake.flaky and n == 1:
                    return self._send(429, {"error": {"code": 429, "message": "quota"}},
                                      headers=[("Retry-After", fake.retry_after)])
                if fake.flaky and n == 2:
                    return self._send(500, {"error": {"code": 500, "message": "internal"}})
                with fake.lock:
                    fake.successes[text] += 1
                self._send(200, {"attributeScores": {"TOXICITY": {
                    "spanScores": [], "summaryScore": {"value": value_of(text), "type": "PROBABILITY"}}},
                    "languages": ["en"]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1alpha1/comments:analyze"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakePerspective()
    yield server
    server.close()
    assert not server.problems


def _options(fake, tmp_path, **over):
    return {"url": fake.url, "qps": 200.0, "max_retries": 4, "timeout": 5, "cache": str(tmp_path / "p.sqlite"),
            "api_key_env": "DETOXFLOW_TEST_PERSPECTIVE_KEY", **over}


FAST = {"backoff_base": 0.001, "backoff_max": 0.01, "progress": False}
TEXTS = [f"continuation number {i}" for i in range(12)] + ["", "   ", "continuation number 3", "naïve ünïcode ✓"]


def test_scores_retries_cache_and_secrecy(fake, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    scorer = build_scorer("perspective", _options(fake, tmp_path), batch_size=5, **FAST)
    scores = scorer.score(TEXTS)
    scorer.close()

    expected = [value_of(t) if t.strip() else 0.0 for t in TEXTS]
    assert scores == pytest.approx(expected, abs=1e-12)
    unique = {t for t in TEXTS if t.strip()}
    assert set(fake.successes) == unique
    assert max(fake.successes.values()) == 1  # no text scored twice (duplicates included)
    assert all(fake.attempts[t] == 3 for t in unique)  # 429, 500, then success
    assert "" not in fake.attempts and "   " not in fake.attempts
    assert scorer.texts_requested == len(unique) and scorer.requests_sent == 3 * len(unique)

    # a rerun answers from the cache: zero requests
    before = fake.requests
    again = build_scorer("perspective", _options(fake, tmp_path), batch_size=64, **FAST)
    assert again.score(list(reversed(TEXTS))) == pytest.approx(list(reversed(expected)), abs=1e-12)
    again.close()
    assert fake.requests == before and again.requests_sent == 0

    out, err = capsys.readouterr()
    logged = caplog.text + out + err + "".join(str(r.args) for r in caplog.records)
    assert "retry" in caplog.text  # the retries were logged ...
    assert KEY not in logged  # ... without the key
    assert KEY.encode() not in (tmp_path / "p.sqlite").read_bytes()
    assert b"continuation number" not in (tmp_path / "p.sqlite").read_bytes()  # texts are not stored either


def test_crash_then_resume_resends_nothing_scored(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    fake.flaky = False
    texts = [f"text {i}" for i in range(10)]
    fake.bad = {"text 6"}
    scorer = build_scorer("perspective", _options(fake, tmp_path), batch_size=4, max_workers=1, **FAST)
    with pytest.raises(DetoxflowError, match=r"HTTP 400.*INVALID_ARGUMENT: Comment text too long"):
        scorer.score(texts)
    scorer.close()
    first = set(fake.successes)
    # the batches before the failure; a request already running when it failed may have finished too
    assert {f"text {i}" for i in range(6)} <= first and "text 6" not in first

    fake.bad = set()
    resumed = build_scorer("perspective", _options(fake, tmp_path), batch_size=4, **FAST)
    assert resumed.score(texts) == pytest.approx([value_of(t) for t in texts], abs=1e-12)
    assert max(fake.successes.values()) == 1
    assert resumed.texts_requested == len(texts) - len(first)  # what the crashed run got is cached


def test_forbidden_key_error_is_clear_and_redacted(fake, tmp_path, monkeypatch, caplog, capsys):
    wrong = "AIzaSy-WRONG-key-9876543210"
    key_file = tmp_path / "key.txt"
    key_file.write_text(wrong + "\n")
    key_file.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    scorer = build_scorer("perspective", _options(fake, tmp_path, api_key_file=str(key_file)), **FAST)
    with pytest.raises(DetoxflowError) as err:
        scorer.score(["hello"])
    message = str(err.value)
    assert "HTTP 403" in message and "PERMISSION_DENIED" in message and "API key not valid" in message
    assert "[REDACTED]" in message  # the server echoed the key; we did not pass it on
    assert wrong not in message
    out, errs = capsys.readouterr()
    assert wrong not in caplog.text + out + errs
    assert fake.requests == 1  # 403 is not retried


def test_retry_after_is_honoured_and_retries_are_bounded(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    sleeps = []
    fake.retry_after = "3"
    scorer = build_scorer("perspective", _options(fake, tmp_path, qps=1000.0), sleep=sleeps.append,
                          backoff_base=0.5, backoff_max=8.0, progress=False)
    assert scorer.score(["x"]) == pytest.approx([value_of("x")])
    # 429 with Retry-After: 3 -> wait 3 s; 500 without it -> backoff in [0.5, 1.0] (second attempt, base 0.5)
    waits = [s for s in sleeps if s >= 0.01]
    assert waits[0] == 3.0 and 0.5 <= waits[1] <= 1.0

    fake.always_503 = True
    sleeps.clear()
    before = fake.requests
    with pytest.raises(DetoxflowError, match=r"giving up after 5 attempts.*HTTP 503"):
        scorer.score(["y"])
    assert fake.requests - before == 5  # max_retries = 4
    backoffs = [s for s in sleeps if s >= 0.01]
    # exponential: attempt k waits in [base*2^k/2, base*2^k], capped at backoff_max
    for k, s in enumerate(backoffs):
        cap = min(8.0, 0.5 * 2 ** k)
        assert cap / 2 <= s <= cap


def test_missing_key_and_unsafe_url(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_PERSPECTIVE_KEY_VAR", raising=False)
    with pytest.raises(DetoxflowError, match=r"NO_SUCH_PERSPECTIVE_KEY_VAR.*api_key_file"):
        build_scorer("perspective", {"api_key_env": "NO_SUCH_PERSPECTIVE_KEY_VAR", "cache": str(tmp_path / "c")})
    with pytest.raises(DetoxflowError, match="file not found"):
        build_scorer("perspective", {"api_key_file": str(tmp_path / "missing.txt")})
    monkeypatch.setenv("K", KEY)
    with pytest.raises(DetoxflowError, match="unencrypted") as err:
        build_scorer("perspective", {"api_key_env": "K", "url": "http://example.com/analyze"})
    assert KEY not in str(err.value)


def test_rate_limiter_spaces_request_starts():
    now = [0.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    starts = []
    for _ in range(6):
        limiter.wait()
        starts.append(now[0])
    assert starts == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
    now[0] += 10.0  # idle time is not banked as a burst
    limiter.wait()
    limiter.wait()
    assert now[0] == pytest.approx(11.25 + 0.25)
