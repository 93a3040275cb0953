"""How long the publisher waits before connecting to the broker again, by how the last attempt
ended — as data, in the style of :mod:`gateway.ble.retry` (every rule has a why).

Every way a connection ends backs off, a clean disconnect included: a broker that accepts and
then drops us at once (another client with our client id, an ACL that kicks us) must not be
hammered hundreds of times a second. Each outcome has its own attempt counter; it is reset
by a CONNACK (failed connects), a session that lasted :data:`SHORT_SESSION_S` (lost sessions)
or one that lasted :data:`STABLE_SESSION_S` (takeovers): a broker restart after a healthy
session is retried within about a second, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from vitalgate.backoff import Backoff

Outcome = Literal["unreachable", "refused", "lost", "takeover", "storage"]

#: a session that lasted this long was healthy: the next loss starts the backoff from scratch.
#: A minute is far longer than a takeover ping-pong's sessions (bounded by the other gateway's
#: backoff, seconds at first) and far shorter than a normal session (hours).
STABLE_SESSION_S: Final = 60.0
#: a session the broker ended within this many seconds of its CONNACK is "short" ...
SHORT_SESSION_S: Final = 10.0
#: ... and this many short sessions in a row are taken for a client-id takeover even on a broker
#: that does not say so (MQTT 3.1.1, or an MQTT 5 broker that only closes the socket). Three,
#: because one or two can be a broker restart or a network blip right after connecting.
SHORT_SESSIONS_FOR_TAKEOVER: Final = 3
#: MQTT 5 DISCONNECT reason code "Session taken over" (0x8E): another client connected with
#: our client id (the same gateway_id on a second machine, or a stale copy of the SD card).
SESSION_TAKEN_OVER: Final = 0x8E


@dataclass(frozen=True, slots=True)
class MqttRetryRule:
    outcome: Outcome
    backoff: Backoff
    why: str


MQTT_RETRY_POLICY: Final[dict[Outcome, MqttRetryRule]] = {
    rule.outcome: rule
    for rule in (
        MqttRetryRule(
            "unreachable", Backoff(initial_s=1.0, factor=2.0, max_s=30.0, jitter=0.5),
            "no TCP/TLS connection or no CONNACK in time (broker restarting, network down): a "
            "restarted Mosquitto is back within a second or two, so ~1 s first, doubling to 30 s "
            "so a returning broker is found within half a minute; ±50 % jitter so a ward's "
            "gateways do not reconnect in lockstep",
        ),
        MqttRetryRule(
            "refused", Backoff(initial_s=5.0, factor=2.0, max_s=300.0, jitter=0.3),
            "CONNACK refused (bad credentials, not authorised): it needs an operator, so do not "
            "hammer the broker's auth; a fixed password or ACL is picked up within 5 minutes",
        ),
        MqttRetryRule(
            "lost", Backoff(initial_s=1.0, factor=2.0, max_s=30.0, jitter=0.5),
            "a session that was up ended (broker restart, network blip, or a clean DISCONNECT): "
            "treated like an error — ~1 s first, doubling while sessions keep ending early",
        ),
        MqttRetryRule(
            "takeover", Backoff(initial_s=5.0, factor=2.0, max_s=120.0, jitter=0.5),
            "another client holds our client id (the broker said 'Session taken over', or we "
            "were dropped soon after connecting several times in a row): both gateways wait "
            "seconds, doubling to 2 min, with wide jitter so one of them keeps the session for "
            "a while instead of both knocking each other off hundreds of times a second",
        ),
        MqttRetryRule(
            "storage", Backoff(initial_s=2.0, factor=2.0, max_s=60.0, jitter=0.5),
            "the buffer could not be read (I/O error): the broker is not at fault; retry the "
            "session within a minute, the buffer's own state says why",
        ),
    )
}
