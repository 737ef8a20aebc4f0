"""The suite's id factory: random UUID4s as 32 lowercase hex digits."""

from __future__ import annotations

import uuid

from eventpost.ids import new_id


def test_new_ids_are_version_4_uuids_in_hex_and_do_not_repeat():
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for found in ids:
        parsed = uuid.UUID(found)
        assert parsed.hex == found
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
