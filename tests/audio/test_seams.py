"""The crossfade between separately generated sentences: no jump, nothing lost but the overlap."""

from __future__ import annotations

import numpy as np

from serve_app.audio.seams import Crossfader


def tone(n: int, phase: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 220 * np.arange(n) / 16000 + phase)).astype(np.float32)


def test_a_seam_between_unrelated_signals_has_no_jump() -> None:
    crossfade = Crossfader(160)
    first, second = tone(1600, 0.0), tone(1600, np.pi)  # second starts where first would jump by ~1.0
    out = [crossfade.feed(c) for c in np.split(first, 4)]
    crossfade.next_segment()
    out += [crossfade.feed(c) for c in np.split(second, 4)]
    out.append(crossfade.flush())
    signal = np.concatenate(out)
    assert len(signal) == 3200 - 160
    assert np.abs(np.diff(signal)).max() < 0.1  # a 220 Hz tone moves < 0.05 per sample at 16 kHz


def test_without_seams_the_signal_passes_unchanged_and_only_late_by_the_overlap() -> None:
    crossfade = Crossfader(100)
    chunks = np.split(tone(3000, 0.3), 10)
    out = [crossfade.feed(c) for c in chunks]
    assert len(out[0]) == 300 - 100 and all(len(o) == 300 for o in out[1:])
    assert np.array_equal(np.concatenate([*out, crossfade.flush()]), np.concatenate(chunks))


def test_chunks_shorter_than_the_overlap() -> None:
    crossfade = Crossfader(100)
    out = [crossfade.feed(np.ones(30, np.float32)) for _ in range(5)]
    crossfade.next_segment()
    out.append(crossfade.feed(np.ones(20, np.float32)))
    assert sum(map(len, out)) + len(crossfade.flush()) == 170


def test_told_which_chunks_end_a_piece_only_those_wait_and_the_seam_is_the_same() -> None:
    """A caller that knows which chunk ends its piece (the batched engine) gets every other chunk whole, at
    once; the joined signal is the one a caller that does not know gets."""
    first, second = np.split(tone(1600, 0.0), 4), np.split(tone(1600, np.pi), 4)
    knowing, unknowing = Crossfader(160), Crossfader(160)
    out, reference = [], []
    for piece in (first, second):
        for index, chunk in enumerate(piece):
            out.append(knowing.feed(chunk, may_end=index == len(piece) - 1))
            reference.append(unknowing.feed(chunk))
        knowing.next_segment()
        unknowing.next_segment()
    assert [len(o) for o in out[:3]] == [400, 400, 400]  # nothing held back inside a piece
    assert len(out[3]) == 400 - 160
    joined = np.concatenate([*out, knowing.flush()])
    assert np.array_equal(joined, np.concatenate([*reference, unknowing.flush()]))
