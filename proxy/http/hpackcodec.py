"""HPACK (RFC 7541) for HTTP/2's server side: requests decoded with the dynamic table, responses encoded
without it.

Our own loop rather than the `hpack` package's Decoder, which builds a tuple subclass per field, slices
the rest of the block for each one and logs every field at debug level: it was a fifth of an HTTP/2
request's cost. A browser's repeated request is mostly one-byte indexed fields, which cost a list lookup
here. Huffman strings and the static table are the `hpack` package's. Responses never add to the
client's table: a few bytes more per response, and no state to keep in step with it.
"""

from __future__ import annotations

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

DEFAULT_TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE, which we leave at its default
_ENTRY_OVERHEAD = 32  # what RFC 7541 4.1 counts per table entry besides its name and value
_MAX_INTEGER_SHIFT = 28  # integers past 2**35 are nonsense in a header block

_STATIC = ((b"", b""), *HeaderTable.STATIC_TABLE)  # 1-based, as the RFC numbers it
_STATIC_COUNT = len(HeaderTable.STATIC_TABLE)


class HpackError(Exception):
    """A header block that cannot be decoded: a COMPRESSION_ERROR for the connection."""


class HeaderListTooLarge(HpackError):
    """The decoded fields went over the limit announced in SETTINGS_MAX_HEADER_LIST_SIZE."""


class HeaderDecoder:
    """One connection's decoding context: the client's dynamic table, newest entry first."""

    __slots__ = ("entries", "max_list", "max_size", "size")

    def __init__(self, max_list: int) -> None:
        self.entries: list[tuple[bytes, bytes]] = []
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE
        self.max_list = max_list

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The (name, value) fields of a whole header block, in order; raises HpackError."""
        fields = []
        append = fields.append
        static = _STATIC
        entries = self.entries
        listed = 0
        limit = self.max_list
        pos = 0
        end = len(data)
        while pos < end:
            byte = data[pos]
            pos += 1
            if byte & 0x80:  # indexed field (6.1)
                index = byte & 0x7F
                if index == 0x7F:
                    index, pos = _integer(data, pos, index)
                if index <= _STATIC_COUNT:
                    if not index:
                        raise HpackError("index 0")
                    field = static[index]
                elif index - _STATIC_COUNT <= len(entries):
                    field = entries[index - _STATIC_COUNT - 1]
                else:
                    raise HpackError(f"index {index}")
            elif byte & 0x40:  # literal, added to the table (6.2.1)
                field, pos = self._literal(data, pos, byte & 0x3F, 0x3F)
                self._add(field)
            elif byte & 0x20:  # dynamic table size update (6.3): only before the first field
                size = byte & 0x1F
                if size == 0x1F:
                    size, pos = _integer(data, pos, size)
                if fields or size > DEFAULT_TABLE_SIZE:
                    raise HpackError("table size update")
                self.max_size = size
                self._evict()
                continue
            else:  # literal, not added (6.2.2), or never to be (6.2.3)
                field, pos = self._literal(data, pos, byte & 0x0F, 0x0F)
            listed += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
            if listed > limit:
                raise HeaderListTooLarge(listed)
            append(field)
        return fields

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        at = index - _STATIC_COUNT - 1
        if at >= len(self.entries):
            raise HpackError(f"index {index}")
        return self.entries[at]

    def _literal(self, data: bytes, pos: int, index: int, prefix_max: int) -> tuple[tuple[bytes, bytes], int]:
        if index == prefix_max:
            index, pos = _integer(data, pos, index)
        if index:
            name = _STATIC[index][0] if index <= _STATIC_COUNT else self._entry(index)[0]
        else:
            name, pos = _string(data, pos)
        value, pos = _string(data, pos)
        return (name, value), pos

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        if size > self.max_size:
            self.entries.clear()  # an entry larger than the table empties it (4.4)
            self.size = 0
            return
        self.entries.insert(0, field)
        self.size += size
        self._evict()

    def _evict(self) -> None:
        entries = self.entries
        while self.size > self.max_size:
            name, value = entries.pop()
            self.size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """The rest of an integer whose prefix was all ones (5.1): 7 bits per byte, lowest first."""
    shift = 0
    while True:
        if pos >= len(data):
            raise HpackError("integer cut off")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > _MAX_INTEGER_SHIFT:
            raise HpackError("integer too large")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """A string literal (5.2), Huffman-decoded when its H bit says so."""
    if pos >= len(data):
        raise HpackError("string cut off")
    byte = data[pos]
    length = byte & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(data, pos, length)
    end = pos + length
    if end > len(data):
        raise HpackError("string cut off")
    if byte & 0x80:
        try:
            return decode_huffman(data[pos:end]), end
        except Exception as error:  # hpack's HPACKDecodingError: bad padding, or EOS inside
            raise HpackError("huffman") from error
    return data[pos:end], end


# -- encoding responses: static-table names where there is one, everything else as plain literals ----

_STATUS_INDEX = {200: 8, 204: 9, 206: 10, 304: 11, 400: 12, 404: 13, 500: 14}
_INDEXED_STATUS = {status: bytes((0x80 | index,)) for status, index in _STATUS_INDEX.items()}
_LENGTHS = tuple(bytes((size,)) for size in range(0x7F))  # a short literal's length byte (H bit clear)


def _static_name_prefixes() -> dict[bytes, bytes]:
    """Each static-table name (past the pseudo-headers) as the start of a literal that refers to it."""
    prefixes: dict[bytes, bytes] = {}
    for index, (name, _) in enumerate(HeaderTable.STATIC_TABLE, start=1):
        if index >= 15 and name not in prefixes:
            prefixes[name] = bytes((0x0F, index - 15))  # literal, not indexed, name index (4-bit prefix)
    return prefixes


# Field names as they start a literal: the static table's, and names without an entry as a target sends
# them (a few hundred kept: targets send few distinct names).
_NAME_PREFIXES = _static_name_prefixes()
_NAME_PREFIXES_KEPT = len(_NAME_PREFIXES) + 512
_KEPT_NAME_LENGTH = 64


def encode_string(value: bytes) -> bytes:
    """A string literal, not Huffman-coded: its length (7-bit prefix integer), then its bytes."""
    size = len(value)
    if size < 0x7F:
        return _LENGTHS[size] + value
    size -= 0x7F
    prefix = bytearray((0x7F,))
    while size >= 0x80:
        prefix.append(size & 0x7F | 0x80)
        size >>= 7
    prefix.append(size)
    return bytes(prefix) + value


def encode_response_head(status: int, fields: list[tuple[bytes, bytes]]) -> bytes:
    """A response's header block: `:status`, then `fields` (lower-case names), none added to a table."""
    indexed = _INDEXED_STATUS.get(status)
    parts = [indexed if indexed is not None else b"\x08" + encode_string(b"%d" % status)]
    append = parts.append
    names = _NAME_PREFIXES
    lengths = _LENGTHS
    for name, value in fields:
        prefix = names.get(name)
        if prefix is None:
            prefix = b"\x00" + encode_string(name)
            if len(name) <= _KEPT_NAME_LENGTH and len(names) < _NAME_PREFIXES_KEPT:
                names[name] = prefix
        append(prefix)
        append(lengths[len(value)] + value if len(value) < 0x7F else encode_string(value))
    return b"".join(parts)
