"""The rule for how many patches a request's next VAE call takes (``serve_app/model/decode_grouping.py``)."""

from __future__ import annotations

from serve_app.model.decode_grouping import DecodeGrouping, group_sizes


def _calls(grouping: DecodeGrouping, patches: int) -> list[int]:
    sizes = []
    while grouping.sent < patches:
        sizes.append(grouping.group())
        grouping.decoded(sizes[-1])
    return sizes


def test_a_stream_starts_a_patch_per_call_then_doubles_up_to_the_cap() -> None:
    assert _calls(DecodeGrouping(16, streaming=True), 120) == [1] * 8 + [2] * 4 + [4] * 4 + [8] * 4 + [16] * 4


def test_a_stream_never_holds_back_more_than_a_quarter_of_what_it_sent() -> None:
    grouping = DecodeGrouping(64, streaming=True)
    for size in _calls(grouping, 2000)[8:]:
        assert size <= grouping.sent / 4 or size == 1
    grouping = DecodeGrouping(64, streaming=True)
    sent = 0
    for size in _calls(grouping, 2000):
        assert size == 1 or size <= sent / 4
        sent += size


def test_unstreamed_requests_and_a_cap_of_one() -> None:
    assert _calls(DecodeGrouping(16, streaming=False), 40) == [16, 16, 16]
    assert _calls(DecodeGrouping(1, streaming=True), 30) == [1] * 30
    assert DecodeGrouping(16, streaming=True).due(1) and not DecodeGrouping(16, streaming=True, sent=8).due(1)


def test_the_group_sizes_a_decoder_warms_up() -> None:
    assert group_sizes(1) == [] and group_sizes(16) == [2, 4, 8, 16] and group_sizes(12) == [2, 4, 8, 12]
