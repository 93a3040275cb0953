"""Pulse Oximeter profile (service 0x1822): Continuous Measurement (0x2A5F, notified: SpO2
and pulse rate, no time stamp, stamped on reception, ``realtime``), Spot-Check Measurement
(0x2A5E, indicated, usually stamped by the device) and the Record Access Control Point
(0x2A52, write + indicate).

On connect (and on an MQTT "sync") the session writes RACP "report stored records / all
records"; the oximeter indicates its stored spot-checks on 0x2A5E, then a RACP response. Every
spot-check between the request and the response is a stored record (``history``); any other
spot-check is a live one (``realtime``). The session deletes nothing on the device: the next
connection reads the records again and ingest's history identity (device, ts, vital) absorbs
them (a failed or unanswered request is counted in ``racp_failures``)."""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar, Final

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from gateway.ble.profiles.base import HealthSession
from gateway.ble.session import Sink, WatchInfo, raise_if_cancel_swallowed
from gateway.clock_sync import SyncedClock
from gateway.settings import GatewaySettings
from gatt.health import (
    PLX_CONTINUOUS,
    PLX_SPOT_CHECK,
    PULSE_OXIMETER_SERVICE,
    RECORD_ACCESS_CONTROL_POINT,
    GattMeasurement,
    RacpCommand,
    RacpOp,
    RacpResponse,
    RacpResult,
)
from vitalgate.contract import Source

log = logging.getLogger(__name__)

#: the longest (real) wait for the RACP response after "report stored records"; a device with
#: thousands of records sends them at a few hundred per second.
RACP_TIMEOUT_S: Final = 30.0


class PulseOximeterSession(HealthSession):
    profile: ClassVar[str] = "pulse_oximeter"
    service: ClassVar[str] = PULSE_OXIMETER_SERVICE
    measurements: ClassVar[tuple[str, ...]] = (PLX_CONTINUOUS, PLX_SPOT_CHECK)
    expected: ClassVar[frozenset[str]] = frozenset({"spo2", "heart_rate"})
    controls: ClassVar[tuple[str, ...]] = (RECORD_ACCESS_CONTROL_POINT,)

    def __init__(self, client: BleakClient, watch: WatchInfo, settings: GatewaySettings,
                 sink: Sink, clock: SyncedClock) -> None:
        super().__init__(client, watch, settings, sink, clock)
        self._reading_records = False
        self._response: asyncio.Future[RacpResponse] | None = None

    async def on_connected(self, chars: dict[str, BleakGATTCharacteristic]) -> None:
        await self.read_stored_records(chars)

    async def on_sync(self, chars: dict[str, BleakGATTCharacteristic]) -> None:
        await self.read_stored_records(chars)

    async def read_stored_records(self, chars: dict[str, BleakGATTCharacteristic]) -> None:
        racp = chars.get(RECORD_ACCESS_CONTROL_POINT)
        if racp is None:
            return  # an oximeter without stored records
        self.counters.racp_requests += 1
        self._response = asyncio.get_running_loop().create_future()
        self._reading_records = True
        before = self.counters.history_records
        try:
            await self.client.write_gatt_char(
                racp, bytes(RacpCommand(RacpOp.REPORT_STORED_RECORDS)), response=True)
            raise_if_cancel_swallowed()
            async with asyncio.timeout(RACP_TIMEOUT_S):
                response = await self._response
        except TimeoutError:
            self.counters.racp_failures += 1
            log.warning("%s: no RACP response: stored records not complete", self.watch.name)
            return
        finally:
            self._reading_records = False
            self._response = None
        if response.result not in (RacpResult.SUCCESS, RacpResult.NO_RECORDS_FOUND):
            self.counters.racp_failures += 1
            log.warning("%s: RACP report failed with result %#04x", self.watch.name, response.result)
            return
        log.info("%s: stored records: %d", self.watch.name, self.counters.history_records - before)

    def on_control(self, uuid: str, data: bytes) -> None:
        response = RacpResponse.from_bytes(data)
        if self._response is not None and not self._response.done() and (
                response.request_op == RacpOp.REPORT_STORED_RECORDS):
            self._response.set_result(response)

    def source_of(self, uuid: str, measurement: GattMeasurement, device_ms: int | None,
                  received_ms: int) -> Source:
        if uuid == PLX_SPOT_CHECK and self._reading_records:
            return Source.HISTORY
        return Source.REALTIME
