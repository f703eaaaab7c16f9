"""The one parser for the numbers the leader hands out as text (task ids, page tokens).

Python's `int()` reads far more than the leader ever writes: other scripts' digits (Arabic-Indic,
fullwidth), signs, spaces, underscores ('1_000'), and `str.isdigit()` passes characters `int()` then refuses
('²'). A request's text reaches a number only through `parse_decimal_id`, which takes exactly the
form the leader writes, so anything else is "not an id this leader gave", never an error inside it.
"""

from __future__ import annotations

import re

# What `str(n)` gives for 1 <= n < 10**18: ASCII digits, no sign, no leading zero. 18 digits keep
# every value below 2**63, SQLite's largest integer.
_DECIMAL_ID = re.compile(r"[1-9][0-9]{0,17}")


def parse_decimal_id(text: str) -> int | None:
    """The number `text` names if it is exactly a decimal id as the leader writes them, else None."""
    return int(text) if _DECIMAL_ID.fullmatch(text) else None
