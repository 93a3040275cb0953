"""Decode any frame by direction.

``decode_watch_message`` (gateway side) turns a frame from the watch into a typed message;
``decode_app_message`` (virtual-watch side) turns a frame from the app into a command. Both
raise ``UnknownMessage`` for a group / key they do not know and ``PayloadError`` for a known
message with a bad payload; they never raise anything but ``E86Error`` subclasses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from e86.commands import (
    MONITOR_KEYS,
    CommandReply,
    DeviceEvent,
    DeviceEventAck,
    DeviceInfo,
    DeviceName,
    EcgControl,
    Functions,
    GetRequest,
    MacAddress,
    MeasureOnce,
    RealtimeUpload,
    SetClock,
    SetMonitoring,
    WaveformUpload,
    WearStatus,
)
from e86.constants import (
    HISTORY_KIND_BY_DELETE_KEY,
    AppControlKey,
    GetKey,
    Group,
    HistoryKey,
    HistoryKind,
    SettingKey,
)
from e86.errors import UnknownMessage
from e86.frame import Frame
from e86.history import (
    BlockAck,
    HistoryDelete,
    HistoryMessage,
    HistoryRequest,
    decode_history,
)
from e86.realtime import RealtimeMessage, decode_realtime


@dataclass(frozen=True, slots=True)
class CollectData:
    """Group 0x07 (raw ECG/PPG files): layout not in the reference, bytes kept."""

    key: int
    payload: bytes

    def to_frame(self) -> Frame:
        return Frame(Group.COLLECT, self.key, self.payload)

    def vitals(self) -> dict[str, float]:
        return {}


WatchMessage = (
    RealtimeMessage
    | HistoryMessage
    | DeviceInfo
    | Functions
    | MacAddress
    | DeviceName
    | WearStatus
    | DeviceEvent
    | CommandReply
    | CollectData
)

AppMessage = (
    SetClock
    | SetMonitoring
    | GetRequest
    | MeasureOnce
    | RealtimeUpload
    | WaveformUpload
    | EcgControl
    | DeviceEventAck
    | HistoryRequest
    | BlockAck
    | HistoryDelete
)

_GET_REPLIES: dict[int, type[DeviceInfo | Functions | MacAddress | DeviceName]] = {
    GetKey.DEVICE_INFO: DeviceInfo,
    GetKey.FUNCTIONS: Functions,
    GetKey.MAC: MacAddress,
    GetKey.NAME_VERSION: DeviceName,
}
_KNOWN_SETTING_KEYS = frozenset(int(k) for k in SettingKey)
_KNOWN_CONTROL_KEYS = frozenset(int(k) for k in AppControlKey)
_REQUEST_KEYS = frozenset(int(k) for k in HistoryKind)


def decode_watch_message(frame: Frame) -> WatchMessage:
    """A frame from the watch → its message (gateway side)."""
    g, k = frame.group, frame.key
    if g == Group.REALTIME:
        return decode_realtime(frame)
    if g == Group.HISTORY:
        return decode_history(frame)
    if g == Group.DEVICE_CONTROL:
        return DeviceEvent.from_frame(frame)
    if g == Group.GET:
        reply = _GET_REPLIES.get(k)
        if reply is None:
            raise UnknownMessage(g, k, "unknown get reply")
        return reply.from_frame(frame)
    if g == Group.APP_CONTROL:
        if k == AppControlKey.WEAR_STATUS:
            return WearStatus.from_frame(frame)
        if k in _KNOWN_CONTROL_KEYS:
            return CommandReply.from_frame(frame)
        raise UnknownMessage(g, k, "unknown app-control reply")
    if g == Group.SETTING:
        if k in _KNOWN_SETTING_KEYS:
            return CommandReply.from_frame(frame)
        raise UnknownMessage(g, k, "unknown setting reply")
    if g == Group.COLLECT:
        return CollectData(k, frame.payload)
    raise UnknownMessage(g, k, "unknown group")


#: the app's commands by (group, key), as data; a later row never overrides an earlier one's
#: key (the key sets are disjoint: tests/gateway/test_e86_commands.py decodes every command).
_APP_COMMANDS: Final[Mapping[tuple[int, int], Callable[[Frame], AppMessage]]] = MappingProxyType({
    (Group.SETTING, SettingKey.CLOCK): SetClock.from_frame,
    **{(Group.SETTING, k): SetMonitoring.from_frame for k in MONITOR_KEYS},
    (Group.APP_CONTROL, AppControlKey.ECG): EcgControl.from_frame,
    (Group.APP_CONTROL, AppControlKey.REALTIME_UPLOAD): RealtimeUpload.from_frame,
    (Group.APP_CONTROL, AppControlKey.WAVEFORM_UPLOAD): WaveformUpload.from_frame,
    (Group.APP_CONTROL, AppControlKey.MEASURE): MeasureOnce.from_frame,
    (Group.HISTORY, HistoryKey.BLOCK_END): BlockAck.from_frame,
    **{(Group.HISTORY, k): HistoryRequest.from_frame for k in _REQUEST_KEYS},
    **{(Group.HISTORY, k): HistoryDelete.from_frame for k in HISTORY_KIND_BY_DELETE_KEY},
})
#: groups whose every key is the same command (the key names what is asked / acknowledged).
_APP_GROUP_COMMANDS: Final[Mapping[int, Callable[[Frame], AppMessage]]] = MappingProxyType({
    Group.GET: GetRequest.from_frame,
    Group.DEVICE_CONTROL: DeviceEventAck.from_frame,
})


def decode_app_message(frame: Frame) -> AppMessage:
    """A frame from the app → its command (virtual-watch side)."""
    g, k = frame.group, frame.key
    decode = _APP_GROUP_COMMANDS.get(g) or _APP_COMMANDS.get((g, k))
    if decode is None:
        raise UnknownMessage(g, k, "not a command vitalgate knows")
    return decode(frame)
