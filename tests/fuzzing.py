"""What the property tests share: the documented exceptions, a call that sorts outcomes, and counts.

"Documented" means a ``maskclip.MaskCLIPError`` (each also a ``ValueError``, ``TypeError`` or
``FileNotFoundError``, see ``maskclip.errors``) with a message that says what was wrong. Any
other exception escaping a public call fails the property, and hypothesis shrinks it to the
smallest input that raises it.

Every ``outcome(...)`` call is counted per property, as "returned" or by error class; the
session prints the table at the end (``conftest.pytest_terminal_summary``) and writes it as
JSON to ``$MASKCLIP_FUZZ_REPORT`` when that is set, for docs/reliability.md.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from typing import Any, Callable, Optional, Tuple

from hypothesis import settings

from maskclip.errors import MaskCLIPError

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
DEV_FACTOR = 20  # the "dev" profile tries this many times the CI budget of every property

COUNTS: "defaultdict[str, Counter]" = defaultdict(Counter)

# A message "says what was wrong" when it names an expectation or a refusal in one of these words.
_EXPLAINS = ("expect", "must", "got", "not found", "exceed", "cannot", "unknown", "refus", "does not",
             "too ", "no ", "not a", "mismatch", "contain", "is empty", "duplicates", "unsupported", "only", "neither", "do not")


def budget(ci_examples: int, **kwargs) -> settings:
    """Settings for a property: ``ci_examples`` in CI, ``DEV_FACTOR`` times more with the dev profile."""
    n = ci_examples if PROFILE == "ci" else ci_examples * DEV_FACTOR
    return settings(max_examples=n, **kwargs)


def outcome(prop: str, call: Callable[..., Any], *args, **kwargs) -> Tuple[Any, Optional[MaskCLIPError]]:
    """``(result, None)`` if ``call`` returns, ``(None, error)`` for a documented error; else it raises."""
    try:
        result = call(*args, **kwargs)
    except MaskCLIPError as e:
        check_message(e)
        COUNTS[prop][type(e).__name__] += 1
        return None, e
    COUNTS[prop]["returned"] += 1
    return result, None


def check_message(e: BaseException) -> None:
    message = str(e)
    assert message.strip(), f"{type(e).__name__} with an empty message"
    assert any(word in message.lower() for word in _EXPLAINS), f"{type(e).__name__} does not explain: {message!r}"


def count(prop: str, what: str = "returned") -> None:
    """Count one example of ``prop`` whose outcome the test sorted itself."""
    COUNTS[prop][what] += 1


def summary_lines() -> list:
    if not COUNTS:
        return []
    total = sum(sum(c.values()) for c in COUNTS.values())
    lines = [f"examples tried and faults injected (hypothesis profile {PROFILE}): {total} in {len(COUNTS)} checks"]
    for prop in sorted(COUNTS):
        c = COUNTS[prop]
        detail = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        lines.append(f"  {prop}: {sum(c.values())} ({detail})")
    return lines


def write_report() -> None:
    path = os.environ.get("MASKCLIP_FUZZ_REPORT")
    if path and COUNTS:
        data = {"profile": PROFILE, "properties": {k: dict(v) for k, v in sorted(COUNTS.items())}}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
