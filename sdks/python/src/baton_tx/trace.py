"""W3C trace context (``traceparent``), parsed as strictly as the Rust SDK does."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

HEADER = "traceparent"
"""The gRPC metadata key that carries the trace context."""

_HEX = frozenset("0123456789abcdef")


def _hex(text: str, length: int) -> Optional[str]:
    if len(text) != length or not set(text) <= _HEX or set(text) == {"0"}:
        return None
    return text


def _random_hex(length: int) -> str:
    while True:
        value = os.urandom(length // 2).hex()
        if set(value) != {"0"}:
            return value


@dataclass(frozen=True)
class TraceParent:
    """One ``traceparent`` value: a 32-hex-digit trace id, the calling span's 16-hex-digit id, and
    flags (bit 0: sampled)."""

    trace_id: str
    span_id: str
    flags: int = 1

    @classmethod
    def new_root(cls) -> "TraceParent":
        """The start of a new trace (random trace and span ids)."""
        return cls(_random_hex(32), _random_hex(16))

    def child(self) -> "TraceParent":
        """The same trace with a fresh span id: what to send on the next outgoing call."""
        return TraceParent(self.trace_id, _random_hex(16), self.flags)

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    @classmethod
    def parse(cls, text: str) -> Optional["TraceParent"]:
        """Parses a header value as W3C Trace Context says (lowercase hex, version ``ff`` and
        all-zero ids refused, version 00 exactly 55 characters); ``None`` for anything else, so an
        invalid header is ignored, never half-used."""
        if not text.isascii() or len(text) < 55 or text[2] != "-" or text[35] != "-":
            return None
        if text[52] != "-":
            return None
        version = text[0:2]
        if len(version) != 2 or not set(version) <= _HEX or version == "ff":
            return None
        if version == "00" and len(text) != 55:
            return None
        if len(text) > 55 and text[55] != "-":
            return None
        trace_id = _hex(text[3:35], 32)
        span_id = _hex(text[36:52], 16)
        flags = text[53:55]
        if trace_id is None or span_id is None or not set(flags) <= _HEX:
            return None
        return cls(trace_id, span_id, int(flags, 16))

    @classmethod
    def from_metadata(cls, metadata: Iterable[Tuple[str, object]]) -> Optional["TraceParent"]:
        """The valid ``traceparent`` among gRPC metadata; several are ambiguous and ignored."""
        values = [v for k, v in metadata if k.lower() == HEADER]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        return cls.parse(values[0])

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"
