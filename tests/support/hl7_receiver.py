"""A real MLLP receiver for the HL7 tests: hl7apy's ``MLLPServer`` in a thread, on a free port.

Every message is parsed by hl7apy at its strict level and validated against the HL7 v2.6
structure named in MSH-9/MSH-12; a message that fails is answered AR (and kept in
``invalid``). ``mode`` chooses the answer to a valid message: ``AA``; ``AE-then-AA`` (AE on
the first receipt of each control id, AA after); ``AR``. ``accepted`` holds the messages
answered AA, in arrival order. The server can be stopped and started again on the same port
(receiver down, receiver up).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from vitalgate.broker import free_port

Mode = Literal["AA", "AE-then-AA", "AR"]


@dataclass(frozen=True)
class Received:
    control_id: str
    user_code: str
    er7: str
    answer: str


def _ack(control_id: str, code: str, text: str = "") -> str:
    ack = Message("ACK", version="2.6", validation_level=VALIDATION_LEVEL.TOLERANT)
    ack.msh.msh_3 = "test-receiver"
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = "ACK" + control_id[-17:]
    ack.msh.msh_11 = "P"
    ack.msh.msh_12 = "2.6"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = control_id
    if text:
        ack.msa.msa_3 = text.replace("|", " ").replace("^", " ").replace("~", " ")\
            .replace("\\", " ").replace("&", " ").replace("\r", " ")[:80]
    return str(ack.to_mllp())


class Receiver:
    def __init__(self, mode: Mode = "AA", port: int | None = None) -> None:
        self.mode: Mode = mode
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.accepted: list[Received] = []
        self.answered: list[Received] = []
        self.invalid: list[str] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._server: MLLPServer | None = None
        self._thread: threading.Thread | None = None

    # called in the server's handler threads
    def handle(self, text: str) -> str:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
        msg.validate()  # raises: answered AR by the error handler
        control = str(msg.msh.msh_10.to_er7())
        pid = msg.oru_r01_patient_result.oru_r01_patient.pid
        user_code = str(pid.pid_3.cx_1.to_er7())
        with self._lock:
            if self.mode == "AR":
                code = "AR"
            elif self.mode == "AE-then-AA" and control not in self._seen:
                code = "AE"
            else:
                code = "AA"
            self._seen.add(control)
            item = Received(control, user_code, text, code)
            self.answered.append(item)
            if code == "AA":
                self.accepted.append(item)
        return _ack(control, code, "" if code == "AA" else f"test receiver answers {code}")

    def handle_error(self, exc: Exception, text: str) -> str:
        with self._lock:
            self.invalid.append(f"{type(exc).__name__}: {exc}")
        control = ""
        for line in text.split("\r"):
            if line.startswith("MSH"):
                fields = line.split("|")
                control = fields[9] if len(fields) > 9 else ""
        return _ack(control or "UNKNOWN", "AR", f"{type(exc).__name__}")

    def start(self) -> None:
        receiver = self

        class Handler(AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                return receiver.handle(self.incoming_message)

        class ErrorHandler(AbstractErrorHandler):  # type: ignore[misc]
            def reply(self) -> str:
                return receiver.handle_error(self.exc, self.incoming_message)

        self._server = MLLPServer(self.host, self.port,
                                  {"ORU^R01^ORU_R01": (Handler,), "ERR": (ErrorHandler,)},
                                  timeout=5)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"mllp-{self.port}")
        self._thread.start()

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)

    def by_patient(self) -> dict[str, list[str]]:
        """Accepted control ids per patient, in arrival order."""
        out: dict[str, list[str]] = {}
        for r in self.accepted:
            out.setdefault(r.user_code, []).append(r.control_id)
        return out


@contextmanager
def running(mode: Mode = "AA", port: int | None = None) -> Iterator[Receiver]:
    r = Receiver(mode, port)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def parse(er7: str) -> Any:
    """A built message parsed by hl7apy (strict), for assertions."""
    return parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)
