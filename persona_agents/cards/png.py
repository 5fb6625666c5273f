"""PNG text chunks, read and written with the standard library (struct, zlib).

Character cards are shared as PNG images carrying the card in a text chunk: `chara`
(Character Card V2) or `ccv3` (V3), each the card's UTF-8 JSON in base64. A PNG is a
signature and a run of chunks (length, type, data, CRC-32 of type and data), IHDR
first and IEND last; text sits in `tEXt` (Latin-1), `zTXt` (compressed) or `iTXt`
(UTF-8, optionally compressed) chunks as `keyword NUL text`.

Reading checks the signature, every chunk's length and CRC, and that IHDR opens and
IEND closes the file, so a truncated or corrupted download is a clear error rather
than a half-read card.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from .errors import CardError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")


def is_png(data: bytes) -> bool:
    return data.startswith(SIGNATURE)


def _chunks(data: bytes, where: Path | str) -> list[tuple[bytes, bytes, int]]:
    """(type, data, offset) of every chunk, checked; raises CardError naming the chunk."""
    if not is_png(data):
        raise CardError([f"{where}: not a PNG file (its first bytes are not the PNG signature)"])
    chunks = []
    pos = len(SIGNATURE)
    index = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise CardError([f"{where}: broken PNG: cut off inside the header of chunk {index} at byte {pos}"])
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise CardError([f"{where}: broken PNG: chunk {index} ({kind.decode('latin-1', 'replace')}) at byte "
                             f"{pos} says it holds {length} bytes, but the file ends first (a truncated file?)"])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:end])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise CardError([f"{where}: broken PNG: chunk {index} ({kind.decode('latin-1', 'replace')}) at byte {pos} "
                             "fails its CRC check (the file is corrupted)"])
        if index == 0 and kind != b"IHDR":
            raise CardError([f"{where}: broken PNG: the first chunk is {kind.decode('latin-1', 'replace')}, not IHDR"])
        chunks.append((kind, body, pos))
        pos = end
        index += 1
        if kind == b"IEND":
            break
    if not chunks or chunks[-1][0] != b"IEND":
        raise CardError([f"{where}: broken PNG: no IEND chunk (the file is cut off)"])
    return chunks


def _text(kind: bytes, body: bytes, where: str) -> tuple[str, str]:
    keyword, sep, rest = body.partition(b"\0")
    if not sep:
        raise CardError([f"{where}: broken PNG: a {kind.decode()} chunk has no NUL after its keyword"])
    name = keyword.decode("latin-1")
    try:
        if kind == b"tEXt":
            return name, rest.decode("latin-1")
        if kind == b"zTXt":
            return name, zlib.decompress(rest[1:]).decode("latin-1")
        compressed, _method = rest[0], rest[1]
        _lang, _, rest = rest[2:].partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return name, (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, IndexError, UnicodeDecodeError) as exc:
        raise CardError([f"{where}: broken PNG: text chunk '{name}' cannot be read: {exc}"]) from None


def read_text_chunks(data: bytes, where: Path | str) -> dict[str, str]:
    """Every text chunk of a PNG by keyword (the first one wins where a keyword repeats)."""
    texts: dict[str, str] = {}
    for kind, body, _ in _chunks(data, where):
        if kind in TEXT_TYPES:
            name, text = _text(kind, body, str(where))
            texts.setdefault(name, text)
    return texts


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def with_text_chunks(image: bytes, texts: dict[str, str], where: Path | str = "image",
                     drop: tuple[str, ...] = ()) -> bytes:
    """`image` with `texts` as tEXt chunks before IEND; existing text chunks with those
    keywords, or named in `drop`, are left out (a re-exported card replaces the old one,
    V2 and V3 alike). Values must be Latin-1 (cards are base64, which is ASCII)."""
    out = [SIGNATURE]
    removed = set(texts) | set(drop)
    for kind, body, _ in _chunks(image, where):
        if kind in TEXT_TYPES and body.partition(b"\0")[0].decode("latin-1") in removed:
            continue
        if kind == b"IEND":
            for name, text in texts.items():
                out.append(_chunk(b"tEXt", name.encode("latin-1") + b"\0" + text.encode("latin-1")))
        out.append(_chunk(kind, body))
    return b"".join(out)


def placeholder_image(size: int = 64, rgb: tuple[int, int, int] = (92, 74, 56)) -> bytes:
    """A plain square PNG (8-bit RGB), for a card exported without an image of its own."""
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    row = b"\0" + bytes(rgb) * size
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(row * size)) + _chunk(b"IEND", b"")
