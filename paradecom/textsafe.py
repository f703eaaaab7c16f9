"""Text from users, LLMs and runners, made safe to show on an operator's terminal.

Project names, task titles, descriptions, errors and runner ids can hold anything: terminal escape
sequences (ESC [ ..., OSC), NUL, CR, bidi overrides (U+202A-U+202E, U+2066-U+2069), zero-width and
other invisible characters. Printed as they are, they can move the cursor, clear or retitle the
terminal, or reorder what the operator reads. Every human-readable line the CLI prints passes the
text it did not write itself through `terminal_safe`.

"Unsafe" is exactly what Python's `str.isprintable()` calls non-printable: every character of the
Unicode categories Other (Cc controls, Cf format characters such as the bidi overrides and
zero-width joiners, Cs surrogates, Co private use, Cn unassigned) and Separator (Zl, Zp, and Zs
other than the ASCII space, so also the no-break space).
"""

from __future__ import annotations

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def escape_char(char: str) -> str:
    """One character as a Python string-literal escape: `\\t`, `\\n`, `\\r`, `\\\\`, `\\xNN`,
    `\\uNNNN` or `\\UNNNNNNNN`."""
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: str, *, keep_newlines: bool = False, reversible: bool = True) -> str:
    """`text` with every non-printable character, and the backslash, written as its Python escape
    (ESC as `\\x1b`, U+202E as `\\u202e`, a backslash as `\\\\`), so what is printed is visible,
    one line (unless `keep_newlines`) and can be read back without doubt. `reversible=False` leaves
    backslashes as they are: for messages that already escape what they quote (not to double it)."""
    if text.isprintable() and (not reversible or "\\" not in text):
        return text
    return "".join(
        char
        if (char.isprintable() and (char != "\\" or not reversible)) or (keep_newlines and char == "\n")
        else escape_char(char)
        for char in text
    )


def json_safe(document: str) -> str:
    """A JSON document (as json.dumps writes it, with ensure_ascii=False) with every non-printable
    character inside its strings written as a `\\uXXXX` escape (a surrogate pair above U+FFFF):
    the same JSON value, but nothing in it can act on a terminal. Line breaks outside strings (the
    indentation) are kept; json.dumps has already escaped those inside strings."""
    if document.replace("\n", "").isprintable():
        return document
    return "".join(char if char.isprintable() or char == "\n" else _json_escape(char) for char in document)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
