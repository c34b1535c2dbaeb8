"""PII and secrets: detectors with typed placeholders, a scrubber and a scan that should find nothing after it.

Order matters: multi-line and structured secrets go first, so that a password in a URL is not half-read as
an e-mail address, and a key block is replaced whole before its lines could match anything else.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

# (type, pattern, validator); the placeholder is f"<{type}>"
Detector = tuple[str, re.Pattern, Callable[[re.Match], bool] | None]


def _luhn(match: re.Match) -> bool:
    digits = [int(c) for c in match.group(0) if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ip(match: re.Match) -> bool:
    try:
        ipaddress.ip_address(match.group(0))
        return True
    except ValueError:
        return False


# "version 3.0.0.1", "v. 1.2.3.4", "release: 2.0.1.7"
_VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver|v|release|rel|build)\.?\s*[:=]?\s*$")
# "1.1.1.0 -> 1.1.2": a changelog's version step
_ARROW_BEFORE = re.compile(r"(?:->|=>|\u2192)\s*$")
_ARROW_AFTER = re.compile(r"^\s*(?:->|=>|\u2192)\s*\d")


def _ipv4(match: re.Match) -> bool:
    """A dotted quad is an address unless its context says version: a version word or a changelog arrow
    next to it, or a first octet of 0 (0.0.0.0/8 holds no host: "0.8.0.1" is a version)."""
    text, start, end = match.string, match.start(), match.end()
    before, after = text[max(0, start - 12):start], text[end:end + 6]
    if match.group(0).startswith("0.") or _VERSION_BEFORE.search(before):
        return False
    if _ARROW_BEFORE.search(before) or _ARROW_AFTER.search(after):
        return False
    return _ip(match)


def _ipv6(match: re.Match) -> bool:
    # "::" alone, hex-looking words like "dead:beef" and namespaces made of hex letters like Perl's "DBD::" or
    # "ABC::Def" (no digit at all) are not addresses worth scrubbing
    text = match.group(0)
    return _ip(match) and text.count(":") >= 2 and any(c.isdigit() for c in text)


DETECTORS: list[Detector] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"), None),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), None),
    ("AWS_ACCESS_KEY", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"), None),
    ("GITHUB_TOKEN", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"), None),
    ("SLACK_TOKEN", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), None),
    ("API_KEY", re.compile(r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20})\b"), None),
    # scheme://user:password@host -> only the password goes
    ("PASSWORD", re.compile(r"(?<=://)(?:[^\s:/@<>]+):(?P<secret>[^\s@/<>]+)(?=@)"), None),
    ("EMAIL", re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
    ("CREDIT_CARD", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _luhn),
    ("PHONE", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w])"
                         r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\d{2,4}){3,5}(?![\w])"), None),
    # not inside a longer dotted run ("1.2.3.4.5" is a version)
    ("IP_ADDRESS", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"), _ipv4),
    ("IP_ADDRESS", re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{3,39}(?![\w:])"), _ipv6),
]


def scrub_text(text: str) -> tuple[str, Counter]:
    """Replace every detected PII or secret with its typed placeholder; returns the text and counts per type."""
    counts: Counter = Counter()
    for kind, pattern, valid in DETECTORS:
        def replace(match: re.Match, kind=kind, valid=valid) -> str:
            if valid and not valid(match):
                return match.group(0)
            counts[kind] += 1
            if "secret" in pattern.groupindex:
                user = match.group(0)[: match.start("secret") - match.start()]
                return f"{user}<{kind}>"
            return f"<{kind}>"

        text = pattern.sub(replace, text)
    return text, counts


def scan_text(text: str) -> Counter:
    """What `scrub_text` would replace, without replacing it: an empty counter means clean."""
    return scrub_text(text)[1]
