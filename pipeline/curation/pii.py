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


def _ipv6(match: re.Match) -> bool:
    # "::" alone or hex-looking words like "dead:beef" are not addresses worth scrubbing
    return _ip(match) and match.group(0).count(":") >= 2 and match.group(0) != "::"


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
    ("IP_ADDRESS", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"), _ip),
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
