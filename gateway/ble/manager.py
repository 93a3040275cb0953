"""The one owner of the Bluetooth adapter: scans for E86 watches and keeps a session per watch.

* One scanner for the whole process (bleak, backend from :mod:`gateway.ble.backend`). Every
  advertisement of an E86 (name "E86 …" or the vendor service UUID) updates that watch's RSSI
  and "last seen"; a watch in ``[gateway.devices]`` (or any E86 with ``adopt_any``) gets a
  connection task.
* Watchdog: when watches are missing and the scanner has heard no advertisement at all for
  ``scan_watchdog_s``, the scanner is stopped and started (BlueZ discovery sometimes goes deaf);
  if that does not bring advertisements back, the next time the scanning adapter is power-cycled
  through the backend (:meth:`BleBackend.power_cycle`). Each step is counted and logged once per
  deaf spell.
* Per watch: wait until it advertises, wait for a connection slot (:mod:`gateway.ble.slots`,
  fair FIFO over every adapter), ``establish_connection`` (bleak-retry-connector), run a
  :class:`WatchSession`; on any failure back off by :mod:`gateway.ble.retry` and try again.
  After ``forget_after_failures`` consecutive failures (not counting "no slot" and "not
  found") the adapter's cached state of the device is dropped first
  (:meth:`BleBackend.forget_device`, BlueZ's RemoveDevice). While others wait for a slot, a
  session yields its slot after ``rotation_session_s`` and its first history sync.
  Device status (retained) goes out on every change.
* Commands from MQTT (``ecg``, ``sync``) are routed to the watch's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak_retry_connector import establish_connection

from e86.advertising import is_e86_name
from e86.constants import MODEL, SERVICE_UUID
from gateway.ble.backend import BleBackend
from gateway.ble.profiles import Session, is_health_device, make_session
from gateway.ble.profiles.base import HealthSession
from gateway.ble.retry import SLOT_RULES, STALE_EXEMPT, rule_for
from gateway.ble.session import Sink, WatchInfo, WatchSession, raise_if_cancel_swallowed
from gateway.ble.slots import Slots
from gateway.clock_sync import HeldReadings, SyncedClock
from gateway.settings import GatewaySettings
from vitalgate.contract import Command, DeviceStatus, device_id_from_mac, normalise_mac

log = logging.getLogger(__name__)

#: how often the scanner watchdog looks (real seconds).
WATCHDOG_PERIOD_S: Final = 1.0
#: internal attempts of establish_connection before our own backoff policy takes over.
CONNECT_ATTEMPTS: Final = 2
#: how long to wait for a disconnect to complete when a session ends.
DISCONNECT_TIMEOUT_S: Final = 5.0
#: scanner restarts in one deaf spell before the adapter is also power-cycled: one plain
#: restart first (cheap, keeps connections), then the power cycle (drops the adapter's
#: connections: their watches reconnect and their history sync fills the gap).
RESTARTS_BEFORE_POWER_CYCLE: Final = 1
#: how often a connected session looks whether it should yield its slot (real seconds).
ROTATION_POLL_S: Final = 0.25

State = Literal["waiting", "queued", "connecting", "connected", "backoff"]


@dataclass
class WatchState:
    info: WatchInfo
    state: State = "waiting"
    ble_device: BLEDevice | None = None
    rssi: int | None = None
    last_seen_mono: float = 0.0
    last_seen_ms: int | None = None
    connects: int = 0
    failures: int = 0
    last_error: str | None = None
    last_reading_ms: int | None = None
    battery: int | None = None
    session: Session | None = None
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # totals over all sessions (a session's counters are added when it ends)
    totals: dict[str, int] = field(default_factory=dict)
    #: realtime readings waiting for a synchronised clock (outlive a session)
    held: HeldReadings[Any] = field(default_factory=HeldReadings)
    adapter: str | None = None
    #: sessions ended to give the slot to a waiting device; longest wait for a slot (clock s)
    rotations: int = 0
    max_wait_s: float = 0.0
    #: consecutive failures that count toward dropping the cached BlueZ state; times dropped
    stale_failures: int = 0
    forgets: int = 0
    #: what the device is, as reported in its status: the E86 model, or the standard profile
    #: its first session found (a BP cuff is not an "E86")
    model: str = MODEL
    #: a health device's recently published device-stamped measurements (outlive a session)
    recent: OrderedDict[Any, None] = field(default_factory=OrderedDict)

    def snapshot(self) -> dict[str, Any]:
        s = self.session
        counters = dict(self.totals)
        frames: dict[str, int] = {}
        if s is not None:
            for k, v in vars(s.counters).items():
                counters[k] = counters.get(k, 0) + v
            frames = s.frame_stats()
        return {
            "device_id": self.info.device_id,
            "name": self.info.name,
            "mac": self.info.mac,
            "user_code": self.info.user_code,
            "state": self.state,
            "rssi": self.rssi,
            "battery": s.battery if s and s.battery is not None else self.battery,
            "last_seen_ms": self.last_seen_ms,
            "last_reading_ms": (s.last_reading_ms if s else None) or self.last_reading_ms,
            "connects": self.connects,
            "failures": self.failures,
            "last_error": self.last_error,
            "counters": counters,
            "frames": frames,
            "adapter": self.adapter,
            "rotations": self.rotations,
            "max_wait_s": round(self.max_wait_s, 1),
            "forgets": self.forgets,
            "clock_held": len(self.held),
            "clock_held_total": self.held.held_total,
            "clock_dropped": self.held.dropped,
        }


class SessionManager:
    def __init__(
        self,
        settings: GatewaySettings,
        backend: BleBackend,
        sink: Sink,
        *,
        on_status: Callable[[DeviceStatus], None] = lambda s: None,
        clock: SyncedClock | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.sink = sink
        self.on_status = on_status
        self.clock = clock or SyncedClock()
        self.watches: dict[str, WatchState] = {}
        self.scanner_restarts = 0
        self.advertisements = 0
        self.commands_unknown_device = 0
        self.slots = Slots(backend.adapters, settings.slots_per_adapter)
        self.adapter_power_cycles = 0
        self.forgets = 0
        self.rotations = 0
        self._last_adv_mono = self.clock.monotonic()
        #: any advertisement at all (a deaf scanner hears nothing, not just no watch)
        self._last_any_adv_mono = self.clock.monotonic()
        self._deaf_restarts = 0
        self._tg: asyncio.TaskGroup | None = None
        self._restart_scanner = asyncio.Event()
        for mac, user_code in settings.devices.items():
            self._watch(mac, None, user_code)

    # ------------------------------------------------------------------ public

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for w in self.watches.values():
                self._start(w)
            tg.create_task(self._scan(), name="ble scanner")

    def snapshot(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "advertisements": self.advertisements,
            "scanner_restarts": self.scanner_restarts,
            "adapter_power_cycles": self.adapter_power_cycles,
            "forgets": self.forgets,
            "rotations": self.rotations,
            "slots": self.slots.snapshot(),
            "clock": {"synchronised": self.clock.synchronised(), "steps": self.clock.steps,
                      "held": sum(len(w.held) for w in self.watches.values()),
                      "dropped": sum(w.held.dropped for w in self.watches.values())},
            "watches": [w.snapshot() for w in self.watches.values()],
        }

    async def handle(self, cmd: Command) -> None:
        """Route an MQTT command to the watch's session (recording runs in the background)."""
        w = self.watches.get(cmd.device_id)
        if w is None or w.session is None or self._tg is None:
            self.commands_unknown_device += 1
            log.warning("command %s for %s: no such watch connected", cmd.cmd, cmd.device_id)
            return
        session = w.session
        if cmd.cmd == "sync":
            session.request_sync()
        elif cmd.cmd == "ecg":
            self._tg.create_task(self._ecg(session, cmd.seconds), name=f"ecg {cmd.device_id}")

    async def _ecg(self, session: Session, seconds: float) -> None:
        try:
            await session.record_ecg(seconds)
        except Exception as exc:  # a failed recording must not stop the gateway
            log.warning("%s: ECG recording failed: %s", session.watch.name, exc)

    # ------------------------------------------------------------------ scanning

    def _watch(self, mac: str, name: str | None, user_code: str | None) -> WatchState:
        mac = normalise_mac(mac)
        device_id = device_id_from_mac(mac)
        w = self.watches.get(device_id)
        if w is None:
            info = WatchInfo(device_id, mac, name or f"{MODEL} {device_id[-4:].upper()}", user_code)
            w = self.watches[device_id] = WatchState(info)
        return w

    def _start(self, w: WatchState) -> None:
        if w.task is None and self._tg is not None:
            w.task = self._tg.create_task(self._connection_loop(w), name=f"watch {w.info.name}")

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self._last_any_adv_mono = self.clock.monotonic()
        if self._deaf_restarts:
            log.info("the scanner hears advertisements again (after %d restarts, %d adapter "
                     "power cycles in all)", self.scanner_restarts, self.adapter_power_cycles)
            self._deaf_restarts = 0
        name = adv.local_name or device.name
        if not (is_e86_name(name) or SERVICE_UUID in (u.lower() for u in adv.service_uuids)
                or is_health_device(adv.service_uuids)):
            return
        self.advertisements += 1
        self._last_adv_mono = self.clock.monotonic()
        try:
            device_id = device_id_from_mac(device.address)
        except ValueError:
            return  # macOS UUID addresses: not a MAC, cannot be a configured watch
        w = self.watches.get(device_id)
        if w is None:
            if not self.settings.adopt_any or len(self.watches) >= self.settings.max_watches:
                return
            w = self._watch(device.address, name, None)
            log.info("adopting %s", w.info.name)
        w.ble_device = device
        w.rssi = adv.rssi
        w.last_seen_mono = self.clock.monotonic()
        w.last_seen_ms = self.clock.ms()
        w.seen.set()
        self._start(w)

    async def _scan(self) -> None:
        while True:
            scanner = self.backend.scanner(detection_callback=self._on_advertisement)
            await scanner.start()
            try:
                raise_if_cancel_swallowed()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await scanner.stop()
                raise
            self._last_adv_mono = self._last_any_adv_mono = self.clock.monotonic()
            try:
                while True:
                    await asyncio.sleep(WATCHDOG_PERIOD_S)
                    missing = [w for w in self.watches.values() if w.state != "connected"]
                    # real seconds (the log says them): the watchdog guards a real radio
                    silent = self.clock.real_seconds(self.clock.monotonic() - self._last_any_adv_mono)
                    if missing and silent > self.clock.real_seconds(self.settings.scan_watchdog_s):
                        break
            finally:
                with contextlib.suppress(Exception):
                    await scanner.stop()
            await self._recover_scanner(silent, len(missing))

    async def _recover_scanner(self, silent: float, missing: int) -> None:
        """Step 1: the scanner is restarted (the loop above does it). Step 2, when a restart
        did not help: power-cycle the scanning adapter. Logged once per deaf spell."""
        self._deaf_restarts += 1
        self.scanner_restarts += 1
        first = self._deaf_restarts == 1
        (log.warning if first else log.debug)(
            "no advertisement for %.0f s while %d watches are missing: restarting the scanner",
            silent, missing)
        if self._deaf_restarts > RESTARTS_BEFORE_POWER_CYCLE:
            adapter = self.backend.adapters[0]
            self.adapter_power_cycles += 1
            (log.warning if self._deaf_restarts == RESTARTS_BEFORE_POWER_CYCLE + 1 else log.debug)(
                "a scanner restart did not help: power-cycling %s", adapter)
            try:
                await self.backend.power_cycle(adapter)
            except Exception as exc:  # an adapter that cannot be cycled: keep restarting scans
                _reraise_if_cancelling(exc)
                log.debug("power cycle of %s failed: %s", adapter, exc)

    # ------------------------------------------------------------------ connections

    async def _connection_loop(self, w: WatchState) -> None:
        attempt = 0
        while True:
            w.state = "waiting"
            await w.seen.wait()
            assert w.ble_device is not None
            w.state = "queued"
            asked = self.clock.monotonic()
            adapter = await self.slots.acquire(w.info.device_id)
            w.max_wait_s = max(w.max_wait_s, self.clock.monotonic() - asked)
            w.adapter = adapter
            w.state = "connecting"
            failure: Exception | None = None
            try:
                await self._serve(w, adapter)
                attempt = 0
                w.stale_failures = 0
            except Exception as exc:  # classified; every failure is retried
                _reraise_if_cancelling(exc)
                failure = exc
                if rule_for(exc).name in SLOT_RULES:  # before the slot goes to somebody else
                    self.slots.refused(adapter, w.info.device_id)
            finally:
                self.slots.release(adapter, w.info.device_id)
            if failure is not None:
                rule = rule_for(failure)
                if rule.name not in SLOT_RULES and rule.name not in STALE_EXEMPT:
                    w.stale_failures += 1
                delay = rule.backoff.delay(attempt)
                attempt += 1
                w.failures += 1
                w.last_error = f"{rule.name}: {failure or type(failure).__name__}"
                w.state = "backoff"
                log.warning("%s: %s; retrying in %.1f s", w.info.name, w.last_error, delay)
                if w.stale_failures >= self.settings.forget_after_failures:
                    await self._forget(w, adapter)
                await self.clock.sleep(delay)
            # reconnect only on a fresh advertisement (the watch is in range again)
            w.seen.clear()

    async def _forget(self, w: WatchState, adapter: str) -> None:
        """Drop the adapter's cached state of a device that keeps failing (BlueZ keeps a device
        object and its GATT cache; a stale one makes every connect fail the same way)."""
        w.stale_failures = 0
        w.forgets += 1
        self.forgets += 1
        (log.warning if w.forgets == 1 else log.debug)(
            "%s: %d failures in a row: clearing %s's cached state of it before retrying",
            w.info.name, self.settings.forget_after_failures, adapter)
        try:
            await self.backend.forget_device(w.info.mac, adapter)
        except Exception as exc:  # no bluetoothd, no such device object: the retry still runs
            _reraise_if_cancelling(exc)
            log.debug("%s: forgetting on %s failed: %s", w.info.name, adapter, exc)

    async def _rotation_due(self, session: Session) -> None:
        """Returns when this session should give its slot to a waiting device: it has had
        ``rotation_session_s`` and its first history sync (a watch; a health device reads its
        stored records before it is ready), and somebody waits."""
        await self.clock.sleep(self.settings.rotation_session_s)
        while True:
            c = session.counters
            synced = (c.history_syncs + c.history_failures > 0 if isinstance(session, WatchSession)
                      else session.ready.is_set())
            if synced and self.slots.waiting():
                return
            await asyncio.sleep(ROTATION_POLL_S)

    async def _serve(self, w: WatchState, adapter: str | None = None) -> None:
        lost = asyncio.Event()
        assert w.ble_device is not None
        client = await establish_connection(
            BleakClient, w.ble_device, w.info.name,
            disconnected_callback=lambda _c: lost.set(),
            max_attempts=CONNECT_ATTEMPTS,
            timeout=self.settings.connect_timeout_s,
            **self.backend.client_kwargs(adapter),
        )
        try:
            raise_if_cancel_swallowed()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                    await client.disconnect()
            raise
        w.connects += 1
        session = make_session(client, w.info, self.settings, self.sink, self.clock)
        if isinstance(session, WatchSession):
            session.held = w.held  # readings held for the clock outlive a session (gateway/clock_sync.py)
        elif isinstance(session, HealthSession):
            w.model = f"GATT {session.profile}"
            session.recent = w.recent  # re-sent memory is published once (profiles/base.py)
        w.session = session
        run = asyncio.create_task(session.run(), name=f"session {w.info.name}")
        gone = asyncio.create_task(lost.wait())
        ready = asyncio.create_task(session.ready.wait())
        turn = asyncio.create_task(self._rotation_due(session))
        try:
            await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
            if session.ready.is_set():
                w.state = "connected"
                log.info("%s: connected", w.info.name)
                self._status(w, True)
            await asyncio.wait({run, gone, turn}, return_when=asyncio.FIRST_COMPLETED)
            failure = run.exception() if run.done() and not run.cancelled() else None
            if failure is not None and not lost.is_set():
                raise failure
            if turn.done() and not run.done() and not lost.is_set():
                w.rotations += 1
                self.rotations += 1
                log.debug("%s: yielding its slot to a waiting device", w.info.name)
            else:
                log.info("%s: disconnected", w.info.name)
        finally:
            for t in (run, gone, ready, turn):
                t.cancel()
            await asyncio.gather(run, gone, ready, turn, return_exceptions=True)
            for k, v in vars(session.counters).items():
                w.totals[k] = w.totals.get(k, 0) + v
            w.last_reading_ms = session.last_reading_ms or w.last_reading_ms
            w.battery = session.battery if session.battery is not None else w.battery
            w.session = None
            w.state = "waiting"
            self._status(w, False)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                    await client.disconnect()

    def _status(self, w: WatchState, connected: bool) -> None:
        battery = w.session.battery if w.session is not None else w.battery
        self.on_status(DeviceStatus(
            device_id=w.info.device_id, name=w.info.name, mac=w.info.mac, model=w.model,
            connected=connected, battery=battery, rssi=w.rssi, last_seen=w.last_seen_ms,
            user_code=w.info.user_code,
        ))


def _reraise_if_cancelling(exc: BaseException) -> None:
    """A library below turned our cancellation into an error (bleak/bumble do this while a
    connect or a GATT request is pending): stop, do not retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc
