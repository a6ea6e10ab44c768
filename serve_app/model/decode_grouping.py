"""How many of a request's latent patches go through the VAE in one call: the rule both engines follow.

Much of a VAE call's cost is fixed where the decoder is bound by its kernels' fixed cost (small models,
a CPU, a GPU launching kernels one by one): decoding a stream one patch per call made it cost far more than
the same audio unstreamed; grouping brings it close (docs/engines.md: Incremental VAE decode).

So a stream's first patch goes through the VAE alone (first audio is unchanged), and after that each
call takes as many new patches as a quarter of those the stream has already sent allows: a power of two
(1, 2, 4, ...), at most ``max_patches``. Holding back at most a quarter of what a listener already has,
a stream whose steps each take under 0.8x the audio they make never runs dry, however long its calls wait.
The group depends on the request's own count of patches, never on the clock or how fast its client
reads. The samples differ from patch-by-patch decoding only by float32 rounding (about 4e-7: the same
causal convolutions over longer inputs). Non-streaming requests, whom nobody hears before their sentence
ends, decode ``max_patches`` at a time. A sentence's end decodes what is left, whatever its number.

In a busy batch the streams go back to a patch per call: the batched engine decodes one patch of every stream
in a step in one call, which costs about what one stream's call does, while grouped streams at their own
points each need calls of their own. Past ``GROUPED_STREAMS`` streams in a step the grouped calls cost more
than the one call (docs/engines.md: In a busy batch, a patch per step again), so there a stream decodes what
it holds and then a patch per step with the others. That makes a stream's audio depend, by float32 rounding,
on how busy its batch was, as float32 batching already does; with ``batch_invariant`` (bit for bit, whatever
the batch) the group follows the request's own count alone.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUPED_STREAMS = 4  # streams in a step beyond which they decode a patch per step, together


@dataclass
class DecodeGrouping:
    """One request's patches on their way to the VAE, counted over its whole utterance."""

    max_patches: int
    streaming: bool
    sent: int = 0  # patches decoded so far

    def group(self) -> int:
        """Patches the next VAE call takes."""
        if not self.streaming:
            return self.max_patches
        quarter = self.sent // 4
        return 1 if quarter < 1 else min(self.max_patches, 1 << (quarter.bit_length() - 1))

    def due(self, pending: int) -> bool:
        """Whether ``pending`` undecoded patches make the next call."""
        return pending >= self.group()

    def decoded(self, patches: int) -> None:
        self.sent += patches


def group_sizes(max_patches: int) -> list[int]:
    """The sizes of the calls that take more than one patch, but for a sentence's last: the shapes a
    decoder warms up."""
    powers = [2**power for power in range(1, (max_patches - 1).bit_length())]  # those below max_patches
    return [*powers, max_patches] if max_patches > 1 else []
