"""The E86 (Yucheng "YC") watch protocol: pure wire formats, both directions, stdlib only.

Modules:
- ``constants``: every UUID, group / key code, table and magic number, explained.
- ``errors``: ``E86Error`` and its subclasses (the only exceptions bad bytes can raise).
- ``frame``: ``Frame``, ``crc16_ccitt_false``, ``FrameAssembler`` (reassembly + resync),
  ``split_for_mtu``.
- ``commands``: groups 0x01–0x04: set clock, monitoring, get requests and replies, one-shot
  measurement, real-time / waveform / ECG switches, wear status, device events and acks.
- ``realtime``: group 0x06 uploads (``decode_realtime``, ``RealtimeValues``, ``EcgSamples``).
- ``records``: history record layouts as data, read by one generic codec; record frames.
- ``history``: group 0x05 sync messages: request, header, block end / ack, delete.
- ``history_receiver``: ``HistoryReceiver`` (gateway side, sans-IO).
- ``history_builder``: ``history_reply`` / ``history_frames`` (watch side).
- ``messages``: ``decode_watch_message`` / ``decode_app_message`` by direction.
- ``clock``: watch time ↔ UTC milliseconds, the set-clock command.
- ``advertising``: advertised names and manufacturer data.
- ``values``: field rules shared by the messages ("0 = no value", temperature bytes).

Import from the modules (``from e86.frame import Frame``): each name lives in one place.

See docs/e86-protocol.md and /work/shared/ref/e86-protocol.md.
"""
