"""Replay recorded vitals through virtual E86 watches and the real gateway path.

Each track becomes one virtual watch on a bumble link; the watch measures on its own schedule
and reports what the recording says at that moment of the replay (the latest recorded value
of each vital, held until the next row, as a watch on a patient would keep measuring). The
gateway's own code collects them over the bleak backend and publishes to MQTT, so a replayed
real patient exercises BLE decoding, store-and-forward and the contract exactly as a ward
would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulators.recording import Track
from simulators.replay import identity_for
from vitalgate.contract import mac_from_device_id

log = logging.getLogger(__name__)

#: a recorded value is reported for at most this long after its row (recording time, ms);
#: longer gaps in the recording become gaps in what the watch reports, not a frozen value.
HOLD_MS = 2 * 3_600_000


@dataclass(frozen=True, slots=True)
class TrackSource:
    """The vitals a watch replaying ``track`` measures at wall time ``ts`` (ms)."""

    track: Track
    start_ms: int
    speed: float

    def __call__(self, ts_ms: int) -> Mapping[str, float]:
        pos = (ts_ms - self.start_ms) * self.speed
        t = self.track.t_ms
        out: dict[str, float] = {}
        for vital, values in self.track.vitals.items():
            seen = ~np.isnan(values) & (t <= pos)
            if not seen.any():
                continue
            i = int(np.flatnonzero(seen)[-1])
            if pos - int(t[i]) <= HOLD_MS:
                out[vital] = float(values[i])
        return out

    @property
    def duration_ms(self) -> float:
        """Real time the replay of this track takes."""
        return float(self.track.t_ms[-1]) / self.speed if len(self.track.t_ms) else 0.0


def identities(track: Track) -> tuple[str, str]:
    """(MAC, user_code) of the watch replaying ``track``."""
    device_id, user_code = identity_for(track.name)
    return mac_from_device_id(track.device_id or device_id), track.user_code or user_code


async def replay_through_watches(
    tracks: Sequence[Track],
    *,
    mqtt_url: str,
    gateway_id: str,
    data_dir: Path,
    speed: float,
    interval_s: float = 5.0,
    prefix: str | None = None,
    now_ms: Callable[[], int] | None = None,
    linger_s: float = 10.0,
) -> dict[str, Any]:
    """Run virtual watches for ``tracks`` and a gateway collecting them until every track has
    played (plus ``linger_s`` for the buffer to drain); returns the gateway's final snapshot."""
    from gateway.clock_sync import SyncedClock, SystemSync
    from gateway.service import Gateway
    from gateway.settings import GatewaySettings
    from simulators.bleak_bumble import BumbleLink
    from simulators.simulate import bumble_backend
    from simulators.watch import VirtualE86
    from vitalgate.config import load_settings

    # a replay is a simulation on this host's wall clock: trusted as it is (gateway/clock_sync.py
    # would hold every reading on a host that cannot report NTP sync, such as a container)
    clock = SyncedClock(source=SystemSync(assume_synchronised=True))
    start = now_ms() if now_ms else clock.ms()
    sources = [TrackSource(t, start, speed) for t in tracks]
    devices = dict(identities(t) for t in tracks)
    overrides: dict[str, Any] = {"mqtt_url": mqtt_url, "gateway_id": gateway_id,
                                 "data_dir": data_dir, "devices": devices,
                                 # no status endpoint to share a port with a real gateway (0:
                                 # any free port), and a slot per watch on the simulated radio
                                 "status_port": 0, "slots_per_adapter": min(max(len(tracks), 1), 10)}
    if prefix:
        overrides["prefix"] = prefix
    settings = load_settings(GatewaySettings, None, **overrides)
    async with BumbleLink() as link, contextlib.AsyncExitStack() as stack:
        for i, (track, source) in enumerate(zip(tracks, sources, strict=True)):
            mac, _ = identities(track)
            watch = VirtualE86(link, mac, clock=clock, vitals=source, realtime_interval_s=interval_s,
                               seed=i)
            await stack.enter_async_context(watch)
        gateway = Gateway(settings, bumble_backend(link), clock=clock)
        run = asyncio.create_task(gateway.run())
        try:
            longest = max((s.duration_ms for s in sources), default=0.0) / 1000
            log.info("replaying %d tracks through virtual watches for %.0f s", len(tracks), longest)
            await asyncio.sleep(longest + linger_s)
            snapshot: dict[str, Any] = gateway.snapshot()
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
    return snapshot
