from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from ingest.consumer import partition_of
from ingest.settings import IngestSettings
from vitalgate.config import load_settings


def test_partition_setting_is_checked() -> None:
    assert load_settings(IngestSettings, None, partition="1/3").partition_of == (1, 3)
    assert load_settings(IngestSettings, None).partition_of is None
    for bad in ("3/3", "1-3", "a/b", "-1/2"):
        with pytest.raises(ValidationError, match="partition"):
            load_settings(IngestSettings, None, partition=bad)


def test_partition_of_is_stable_and_spreads_devices() -> None:
    devices = [f"{i:012x}" for i in range(0, 4000 * 7919, 7919)]
    assert partition_of("d061aed45894", 4) == partition_of("d061aed45894", 4)
    counts = Counter(partition_of(d, 4) for d in devices)
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 0.8 * len(devices) / 4
