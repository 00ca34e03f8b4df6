"""Which sources are up or down, from what the store last recorded of each (the daemon may be down)."""

from __future__ import annotations

from typing import Any

from auditor.config import Config
from auditor.store import Store
from collectors.inference import shown_url


def source_states(config: Config, store: Store, now: float) -> list[dict[str, Any]]:
    """Every source the daemon samples, from the store: up (a sample within three intervals), or down
    since its last sample (never sampled: `down_since_ts` is None). GPUs are those ever seen."""
    stale_s = 3 * config.daemon.sample_interval_s
    states: list[dict[str, Any]] = []
    last_server = {(s.deployment, s.instance): s.ts for s in store.last_server_samples_before(now + 1)}
    for d in config.deployments:
        for server in d.servers:
            shown = shown_url(server.url)
            last = last_server.get((d.name, shown))
            up = last is not None and now - last <= stale_s
            states.append(
                {
                    "kind": "inference",
                    "deployment": d.name,
                    "source": shown,
                    "state": "up" if up else "down",
                    "last_sample_ts": last,
                    "down_since_ts": None if up else last,
                }
            )
    for gpu in sorted(store.last_gpu_samples_before(now + 1), key=lambda g: (g.host, g.gpu_index)):
        up = now - gpu.ts <= stale_s
        states.append(
            {
                "kind": "gpu",
                "deployment": gpu.deployment,
                "source": f"{gpu.host} GPU {gpu.gpu_index} {gpu.gpu_uuid}",
                "state": "up" if up else "down",
                "last_sample_ts": gpu.ts,
                "down_since_ts": None if up else gpu.ts,
            }
        )
    return states
