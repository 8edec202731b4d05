"""GET /metrics in the Prometheus text format, read by prometheus_client's parser."""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def _get(addr: str, path: str, accept: str | None = None):
    req = urllib.request.Request(f"http://{addr}{path}")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers, r.read().decode()


def _families(text: str):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_prometheus_text_parses_with_every_family(execd_addr):
    # Some traffic first: a command that fails, one that succeeds.
    for body in ({"command": "exit 4"}, {"command": "echo hi"}):
        req = urllib.request.Request(
            f"http://{execd_addr}/command",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    headers, text = _get(execd_addr, "/metrics?format=prometheus")
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = _families(text)
    for name in (
        "execd_sandbox_cpu_count",
        "execd_sandbox_memory_used_bytes",
        "execd_resident_memory_bytes",
        "execd_open_streams",
        "execd_output_memory_bytes",
        "execd_spill_bytes",
        "execd_commands_started",
        "execd_commands_finished",
        "execd_streamed_bytes",
        "execd_http_requests",
        "execd_command_duration_seconds",
    ):
        assert name in fams, (name, sorted(fams))

    finished = {s.labels["outcome"]: s.value for s in fams["execd_commands_finished"].samples}
    assert finished["failure"] >= 1 and finished["success"] >= 1
    assert fams["execd_commands_started"].samples[0].value >= 2
    assert fams["execd_streamed_bytes"].samples[0].value > 0

    hist = fams["execd_command_duration_seconds"]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    assert buckets[-1].labels["le"] == "+Inf"
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    assert count == buckets[-1].value >= 2

    reqs = fams["execd_http_requests"].samples
    assert any(s.labels == {"route": "command", "status": "200"} and s.value >= 2 for s in reqs)


def test_accept_text_plain_asks_for_it_and_json_stays_the_default(execd_addr):
    headers, text = _get(
        execd_addr,
        "/metrics",
        accept="application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    )
    assert headers["Content-Type"].startswith("text/plain")
    assert "execd_sandbox_cpu_count" in _families(text)
    headers, text = _get(execd_addr, "/metrics")
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(text)["cpu_count"] >= 1
