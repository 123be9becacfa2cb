"""The AdmissionReview contract under hostile input (docs/reliability.md#contract): 20,000
fuzzed bodies through the app in process, then a few hundred through a real `serve` over
TLS. Every answer is 200/400/413/415 (never 5xx), every 200 a well-formed AdmissionReview
whose patch applies to the pod sent, and nothing is logged above warning or with a traceback.
The strategies and the checks are in tests/review_fuzz.py; `make fuzz` runs a million."""

from __future__ import annotations

import http.client
import json
import random

import review_fuzz

from serving import make_certs, start_server

CI_CASES = 20_000


def test_twenty_thousand_fuzzed_reviews_get_documented_answers_and_no_traceback():
    result = review_fuzz.run(CI_CASES, seed=0)
    print(json.dumps(result))
    assert result["cases"] >= CI_CASES
    assert result["5xx"] == 0 and result["tracebacks"] == 0
    # The run reached every kind of answer, so the cases are not all rejected at one door.
    assert {"200 patched", "200 allowed", "200 allowed, malformed", "200 denied", "400", "413", "415"} <= set(
        result["outcomes"])


def test_fuzzed_reviews_through_a_real_serve_over_tls(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    server = start_server(tmp_path, certs, "--max-request-bytes", str(review_fuzz.LIMIT))
    rnd = random.Random(1)
    pool = [None, True, 2**70, -1.5, "", "x" * 70_000, "ünï\u2028", [], [{"name": {}}], {"a": [None]}, {"": ""}]
    outcomes: dict[str, int] = {}
    try:
        connection = http.client.HTTPSConnection(server.host, server.port, context=server.ssl_context, timeout=10)
        for _ in range(400):
            _, body, content_type, sent = review_fuzz.make_case(rnd, pool, b"\xff\xfe{\x00")
            try:
                connection.request("POST", "/mutate", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                status, answer = response.status, response.read()
            except (http.client.HTTPException, OSError):  # the server closed after a 413: reconnect once
                connection.close()
                connection = http.client.HTTPSConnection(server.host, server.port, context=server.ssl_context,
                                                         timeout=10)
                connection.request("POST", "/mutate", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                status, answer = response.status, response.read()
            outcome = review_fuzz.check_answer(status, answer, content_type, sent)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        connection.close()
        assert server.request("GET", "/healthz")[0] == 200
    finally:
        assert server.stop() == 0
    entries = [json.loads(line) for line in server.logs().split("\n") if line.startswith("{")]  # not splitlines: \u2028
    assert [e for e in entries if e.get("level") in ("error", "critical") or "exception" in e] == []
    assert "Traceback" not in server.logs()
    assert sum(outcomes.values()) == 400 and "200 patched" in outcomes and "400" in outcomes
