"""GET /metrics through the OpenSandbox Python SDK 1.1.1's MetricsAdapter."""

from __future__ import annotations

from opensandbox.adapters.metrics_adapter import MetricsAdapter

from sdkutil import AsyncSdk, async_test


@async_test
async def test_sdk_reads_metrics(execd_addr):
    async with AsyncSdk(execd_addr) as sdk:
        adapter = MetricsAdapter(sdk.config, sdk.endpoint)
        m = await adapter.get_metrics("local")
        assert m.cpu_count >= 1
        assert 0.0 <= m.cpu_used_percentage <= 100.0
        assert m.memory_total_in_mib > 0
        assert 0 <= m.memory_used_in_mib <= m.memory_total_in_mib
        assert m.timestamp > 1_600_000_000_000
