"""File paths as text: exact bytes where a format holds bytes, an escaped form where it must be Unicode.

On Linux a path is bytes. Python hands the bytes that are not UTF-8 to str as the surrogates
U+DC80..U+DCFF (PEP 383, `os.fsdecode`), which no UTF-8 encoder accepts. Each format names files one way:

- Text files read by shell tools (the predictions CSV, bad_files.txt): written in the file system's own
  encoding with its error handler (`FS_ENCODING`, `FS_ERRORS`), so they hold every name's bytes exactly
  (`cut -f1 bad_files.txt | xargs ls` finds the files) and stay plain UTF-8 when every name is.
- JSON (predictions, metrics.json, a bundle's config.json, the scan cache): ensure_ascii escapes. Valid
  JSON text; `json.loads` gives back the surrogates and `os.fsencode` the bytes.
- YAML and the console: `escaped`, where a byte that is not UTF-8 is `\\xff`, a backslash `\\\\`, and a
  character that does not print (a control character, a bidi override) the `\\xNN` of its bytes (the escapes
  of C and Python string literals). YAML has no escape for a byte (libyaml refuses escaped lone surrogates),
  and a terminal shows neither raw bytes nor surrogates safely; `unescaped` reverses it. Other text,
  such as an error message, is made printable by `printable`.

Model files are another matter: torch (saving, memory-mapping), onnxruntime and safetensors take file
names as UTF-8 text only, so a run directory, a bundle or a weights file must have a UTF-8 path
(`check_model_path`); the images and the data folder need not.
"""
from __future__ import annotations

import os
import re
import sys

from finetune.errors import FinetuneError

FS_ENCODING, FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_ESCAPE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_FROM_BYTES = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # surrogates os.fsdecode never makes


def escaped(path: str | os.PathLike[str]) -> str:
    """Valid, printable Unicode naming `path` exactly: each byte that is not UTF-8, and each character that
    does not print (control and format characters, separators other than the space), as \\xNN of its bytes;
    a backslash as \\\\. A plain UTF-8 name is unchanged.

    Example:
        >>> escaped(os.fsdecode(b"cat\\xff.jpg"))
        'cat\\\\xff.jpg'
    """
    if isinstance(path, str):  # a caller's own str may hold surrogates that stand for no byte
        path = _NOT_FROM_BYTES.sub("\ufffd", path)
    return "".join(map(_escape_char, os.fsencode(path).decode("utf-8", "surrogateescape")))


def _escape_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable() or char == " ":  # a surrogate (a byte that is not UTF-8) is not printable
        return char
    return "".join(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogateescape"))


def unescaped(text: str) -> str:
    """The path that `escaped` wrote as `text` (with surrogates where its bytes are not UTF-8)."""
    return os.fsdecode(_ESCAPE.sub(_unescape_byte, os.fsencode(text)))


def _unescape_byte(match: re.Match[bytes]) -> bytes:
    return b"\\" if match[1] == b"\\" else bytes([int(match[1][1:], 16)])


def printable(text: str) -> str:
    """`text` with its surrogates written as \\xNN (a byte a path held) or \\uXXXX: any console can print it."""
    def one(m: re.Match[str]) -> str:
        code = ord(m[0])
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    return _SURROGATE.sub(one, text)


def is_utf8(path: str | os.PathLike[str]) -> bool:
    """True when the bytes of `path` are UTF-8 text."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeError:
        return False
    return True


def check_model_path(path: str | os.PathLike[str], what: str) -> None:
    """Raises FinetuneError unless `path` (a run directory, bundle or weights file, called `what` in the
    message) is UTF-8: torch, onnxruntime and safetensors open model files by such names only."""
    if not is_utf8(path):
        raise FinetuneError(f"{what} {escaped(path)}: its path is not UTF-8, and torch, onnxruntime and "
                            f"safetensors open model files by UTF-8 names only; choose or rename a folder "
                            f"whose path is UTF-8 (images and data folders may have any names)")
