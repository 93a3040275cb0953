from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from vitalgate.broker import Mosquitto


def test_private_broker_keeps_persistent_sessions_across_restart(mosquitto: Mosquitto) -> None:
    """Messages queued for an offline persistent session survive a broker restart."""
    got: list[bytes] = []
    done = threading.Event()

    def sub_client() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub", clean_session=False)
        c.on_message = lambda cl, u, m: (got.append(m.payload), done.set())
        return c

    sub = sub_client()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("t/#", qos=1)
    sub.loop_start()
    sub.disconnect()
    sub.loop_stop()

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    pub.publish("t/x", b"kept", qos=1).wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()

    mosquitto.stop()
    mosquitto.start()

    sub = sub_client()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    assert done.wait(10)
    sub.disconnect()
    sub.loop_stop()
    assert got == [b"kept"]
