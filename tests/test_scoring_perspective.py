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


def value_of(text: str, salt: str = "") -> float:
    """What the fake API scores a text: a deterministic function of the text (and the server's salt)."""
    return int(hashlib.md5((salt + text).encode()).hexdigest()[:6], 16) / 0xFFFFFF


class FakePerspective:
    """Answers 429 then 500 before the real answer for every text (``flaky``);
    403 (echoing the key, as a careless server might) for a wrong key;
    400 for texts listed in ``bad``; ``values`` overrides the score of a text (NaN...);
    ``trickle`` sends the answer one byte every ``trickle_interval`` seconds: its status
    line and headers ("headers"), or its body with / without Content-Length ("body",
    "body-no-length"); counts everything."""

    def __init__(self, salt: str = "", tls=None):
        self.salt = salt
        self.languages = ["en"]
        self.values = {}
        self.trickle = None
        self.trickle_interval = 0.5
        self.closing = threading.Event()
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
                head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", "Connection: close"]
                if fake.trickle != "body-no-length":
                    head.append(f"Content-Length: {len(data)}")
                head += [f"{k}: {v}" for k, v in headers]
                head = ("\r\n".join(head) + "\r\n\r\n").encode()
                self.close_connection = True
                if fake.trickle is None:
                    self.wfile.write(head + data)
                    return
                slow, fast = (head, data) if fake.trickle == "headers" else (data, head)
                try:
                    if fake.trickle != "headers":
                        self.wfile.write(fast)
                    for i in range(len(slow)):
                        if fake.closing.wait(fake.trickle_interval):
                            return
                        self.wfile.write(slow[i:i + 1])
                        self.wfile.flush()
                    if fake.trickle == "headers":
                        self.wfile.write(fast)
                except OSError:
                    pass  # the client hung up

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["comment"]["text"]
                with fake.lock:
                    fake.requests += 1
                    fake.attempts[text] += 1
                    n = fake.attempts[text]
                    if KEY in self.path:
                        fake.problems.append("key in URL")
                    if body.get("doNotStore") is not True or body.get("languages") != fake.languages \
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
                value = fake.values.get(text, value_of(text, fake.salt))
                self._send(200, {"attributeScores": {"TOXICITY": {
                    "spanScores": [], "summaryScore": {"value": value, "type": "PROBABILITY"}}},
                    "languages": fake.languages})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:  # (certificate, private key) files
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/v1alpha1/comments:analyze"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.closing.set()
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


# -- cache scope ---------------------------------------------------------------------------

def test_cache_key_covers_endpoint_and_request_settings(tmp_path, monkeypatch):
    """One cache file, two servers that score differently: each gets its own scores, and a
    changed request setting (languages) is asked again instead of served from the cache."""
    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    a, b = FakePerspective(salt="a"), FakePerspective(salt="b")
    a.flaky = b.flaky = False
    texts = [f"text {i}" for i in range(5)]
    try:
        def run(server, **over):
            with build_scorer("perspective", _options(server, tmp_path, **over), **FAST) as scorer:
                return scorer.score(texts), scorer.texts_requested

        assert run(a) == (pytest.approx([value_of(t, "a") for t in texts]), 5)
        assert run(b) == (pytest.approx([value_of(t, "b") for t in texts]), 5)  # not a's cached scores
        assert run(a) == (pytest.approx([value_of(t, "a") for t in texts]), 0)  # a's own cache entries
        a.languages = ["en", "de"]
        assert run(a, languages=["en", "de"])[1] == 5
        assert a.successes == Counter({t: 2 for t in texts})
        assert not a.problems and not b.problems
    finally:
        a.close()
        b.close()


# -- total deadline per request ------------------------------------------------------------

@pytest.mark.parametrize("part", ["headers", "body", "body-no-length"])
def test_a_trickling_answer_is_cut_off_at_the_total_deadline(fake, tmp_path, monkeypatch, part):
    """One byte every 0.5 s never trips a per-read timeout of 1.5 s; the total deadline does."""
    import time

    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    fake.flaky = False
    fake.trickle = part
    scorer = build_scorer("perspective", _options(fake, tmp_path, timeout=1.5, max_retries=1), **FAST)
    t0 = time.monotonic()
    with pytest.raises(DetoxflowError, match=r"giving up after 2 attempts; last: TimeoutError: no complete "
                                             r"answer within evaluation\.toxicity\.perspective\.timeout = 1\.5 s"):
        scorer.score(["slow text"])
    elapsed = time.monotonic() - t0
    scorer.close()
    assert 2 * 1.5 <= elapsed < 2 * 1.5 + 1.5  # two attempts of 1.5 s each, not the ~60 s of trickling
    assert fake.attempts["slow text"] == 2


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (made with the openssl command line)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("part", ["headers", "body-no-length"])
def test_https_trickle_is_cut_off_and_https_answers_are_read(tmp_path, monkeypatch, tls_files, part):
    """The same over TLS (the real API's transport), trusting the test certificate."""
    import time

    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    server = FakePerspective(tls=tls_files)
    try:
        assert server.url.startswith("https://")
        with build_scorer("perspective", _options(server, tmp_path), **FAST) as scorer:  # 429, 500, answer
            assert scorer.score(["over tls"]) == pytest.approx([value_of("over tls")])
        server.flaky = False
        server.trickle = part
        scorer = build_scorer("perspective", _options(server, tmp_path, timeout=1.5, max_retries=0), **FAST)
        t0 = time.monotonic()
        with pytest.raises(DetoxflowError, match=r"TimeoutError: no complete answer within"):
            scorer.score(["slow over tls"])
        assert 1.5 <= time.monotonic() - t0 < 3.0
        scorer.close()
        assert not server.problems
    finally:
        server.close()


def test_a_slow_answer_within_the_deadline_is_read_whole(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    fake.flaky = False
    fake.trickle, fake.trickle_interval = "body-no-length", 0.002  # ~150 bytes in ~0.3 s
    with build_scorer("perspective", _options(fake, tmp_path, timeout=20), **FAST) as scorer:
        assert scorer.score(["slow but fine"]) == pytest.approx([value_of("slow but fine")])


# -- the wait budget of a job ----------------------------------------------------------------

def test_retry_after_beyond_the_wait_budget_stops_the_job(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    sleeps = []
    fake.retry_after = "30"
    scorer = build_scorer("perspective", _options(fake, tmp_path, max_total_wait_s=10), sleep=sleeps.append,
                          progress=False)
    with pytest.raises(DetoxflowError, match=r"HTTP 429.*waiting 30\.0 s more \(the server's Retry-After\) would "
                                             r"take this job's retry waits past "
                                             r"evaluation\.toxicity\.perspective\.max_total_wait_s = 10 s"):
        scorer.score(["x"])
    assert all(s < 1 for s in sleeps)  # the 30 s were not slept
    assert fake.attempts["x"] == 1


def test_backoff_waits_add_up_to_at_most_the_budget(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    sleeps = []
    fake.always_503 = True
    scorer = build_scorer("perspective", _options(fake, tmp_path, max_retries=50, max_total_wait_s=5,
                                                  qps=1000.0),
                          sleep=sleeps.append, backoff_base=1.0, backoff_max=64.0, progress=False)
    with pytest.raises(DetoxflowError, match=r"HTTP 503.*\(backoff\).*max_total_wait_s = 5 s"):
        scorer.score(["a", "b", "c"])  # three texts share one budget
    waits = [s for s in sleeps if s >= 0.3]  # backoff sleeps (rate-limiter sleeps are < 1 ms)
    assert 0 < sum(waits) <= 5.0 and sum(waits) == pytest.approx(scorer.waited_s)
    assert sum(fake.attempts.values()) < 3 * 51  # stopped long before max_retries


# -- scores that are not probabilities -------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.25, float("inf")])
def test_a_score_outside_0_1_is_an_error_naming_the_text(fake, tmp_path, monkeypatch, bad):
    monkeypatch.setenv("DETOXFLOW_TEST_PERSPECTIVE_KEY", KEY)
    fake.flaky = False
    texts = ["fine 0", "fine 1", "", "broken", "fine 2"]
    fake.values = {"broken": bad}
    scorer = build_scorer("perspective", _options(fake, tmp_path), batch_size=2, **FAST)
    with pytest.raises(DetoxflowError, match=rf"text #3 scored {bad}, not a probability in \[0, 1\]; "
                                             r"nothing was cached"):
        scorer.score(texts)
    scorer.close()
    fake.values = {}
    with build_scorer("perspective", _options(fake, tmp_path), batch_size=2, **FAST) as again:
        assert again.score(texts) == pytest.approx([value_of(t) if t else 0.0 for t in texts])
    assert fake.successes["broken"] == 2  # asked again: the bad score was not cached


# -- the key --------------------------------------------------------------------------------

@pytest.mark.parametrize("pasted", [KEY, "AIzaSyD0123456789abcdefghijklmnopqrstu", "sk live 123", "perspective_key"])
def test_a_key_pasted_into_api_key_env_is_refused_without_echo(tmp_path, monkeypatch, caplog, pasted):
    from detoxflow.config import validate_config

    REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DetoxflowError, match=r"api_key_env must be the NAME of an environment variable") as err:
        build_scorer("perspective", {"api_key_env": pasted, "cache": str(tmp_path / "c.sqlite")})
    with pytest.raises(DetoxflowError, match=r"api_key_env: not valid \(pattern") as cfg_err:
        validate_config({"evaluation": {"toxicity": {"perspective": {"api_key_env": pasted}}}},
                        REPO / "src" / "detoxflow" / "schema")
    for text in (str(err.value), str(cfg_err.value), caplog.text):
        assert pasted not in text
    assert not (tmp_path / "c.sqlite").exists()


def test_nothing_a_scoring_run_writes_or_logs_holds_the_key(fake, tmp_path):
    """The CLI end to end (debug logging, retries), then a run the server refuses while
    echoing the key: every file written and every line logged is searched for the key."""
    import os
    import subprocess
    import sys
    import urllib.parse

    work = tmp_path / "work"
    gen = work / "results" / "eval" / "m" / "plain" / "generations.jsonl"
    gen.parent.mkdir(parents=True)
    gen.write_text("".join(json.dumps({"prompt": f"p{i}", "continuations": [f"c{i}a", f"c{i}b", ""]}) + "\n"
                           for i in range(3)))
    settings = {"scorer": "perspective", "threshold": 0.5, "batch_size": 4,
                "perspective": {"url": fake.url, "qps": 50.0, "max_retries": 3, "timeout": 10,
                                "api_key_env": "DETOXFLOW_TEST_PERSPECTIVE_KEY",
                                "cache": str(work / "results" / "cache" / "p.sqlite")}}
    out, metrics = gen.parent / "toxicity.jsonl", gen.parent / "toxicity_metrics.json"

    def run(key):
        env = {**os.environ, "DETOXFLOW_TEST_PERSPECTIVE_KEY": key}
        return subprocess.run([sys.executable, "-m", "detoxflow", "-v", "score-toxicity", "--generations", str(gen),
                               "--settings", json.dumps(settings), "--model-name", "base", "--prompting", "plain",
                               "--out", str(out), "--metrics", str(metrics)],
                              capture_output=True, text=True, env=env, cwd=work, timeout=300)

    def assert_key_absent(key, proc):
        forms = {key, urllib.parse.quote(key, safe=""), json.dumps(key)[1:-1]}
        for path in [p for p in work.rglob("*") if p.is_file()]:
            data = path.read_bytes()
            assert not any(f.encode() in data for f in forms), f"key in {path}"
        assert not any(f in proc.stdout + proc.stderr for f in forms)

    proc = run(KEY)
    assert proc.returncode == 0, proc.stderr
    assert "retry" in proc.stderr  # debug logging was on, and the 429 / 500 retries were logged
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[1]["toxicity"] == pytest.approx([value_of("c1a"), value_of("c1b"), 0.0])
    assert_key_absent(KEY, proc)

    wrong = "AIzaSy-WRONG-key-for-the-echo-test-000"
    out.unlink()
    metrics.unlink()
    settings["perspective"]["cache"] = str(work / "results" / "cache" / "p2.sqlite")
    proc = run(wrong)
    assert proc.returncode == 2 and "HTTP 403" in proc.stderr and "[REDACTED]" in proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert not out.exists() and not metrics.exists()
    assert_key_absent(wrong, proc)
