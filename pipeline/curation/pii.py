"""PII and secrets: detectors that find typed spans, and a scrubber that replaces each with `<TYPE>`.

Detectors run in priority order over the original text and a later one never claims a span an earlier one holds:
a key block is replaced whole before its lines could match anything else, and a password in a URL before its
`user:pw@host` could be half-read as an e-mail address. Secrets follow the rules maintained scanners use
(detect-secrets, gitleaks): provider key shapes, values named by a secret-sounding key, and high-entropy strings.
What must stay (version strings, section and OID numbers, number lists, git remotes, hashes, UUIDs) is measured
by `bench/pii_bench.py` on `bench/pii_labelled.jsonl`. The blocking check uses a separate detector
(`pipeline.curation.pii_audit`), so it can catch what these rules miss.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

# (type, pattern, validator); the placeholder is f"<{type}>"; a pattern with a `secret` group replaces that group only
Detector = tuple[str, re.Pattern, Callable[[re.Match], bool] | None]


@dataclass(frozen=True)
class Finding:
    type: str
    start: int
    end: int
    value: str


def _luhn(digits: list[int]) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match) -> bool:
    # issuer prefixes 2-6 (Mastercard 2-series, Amex/Diners 3, Visa 4, Mastercard 5, Discover/UnionPay 6)
    digits = [int(c) for c in match.group(0) if c.isdigit()]
    return 13 <= len(digits) <= 19 and 2 <= digits[0] <= 6 and _luhn(digits)


def _before(match: re.Match, width: int) -> str:
    return match.string[max(0, match.start() - width):match.start()]


# "version 3.0.0.1", "v. 1.2.3.4", "release: 2.0.1.7", "check_hpasm (4.8.0.2)"
_VERSION_BEFORE = re.compile(r"(?i)(?:\b(?:version|ver|v|release|rel|build)\.?\s*[:=]?\s*|[A-Za-z][\w.+]*[_\d-][\w.+-]*\s\(|\bv)$")
# "section 2.1.3.4", "RFC 2616 section 14.4.1.2", "OID 1.3.6.1": numbering, not addressing
_NUMBERING_BEFORE = re.compile(r"(?i)\b(?:section|sect|sec|chapter|ch|clause|paragraph|para|part|appendix|step|item|table|"
                               r"figure|fig|article|art|rule|oid|mib|arc|§)\.?\s*[:#]?\s*$|§\s*$")
# "1.1.1.0 -> 1.1.2": a changelog's version step
_ARROW_BEFORE = re.compile(r"(?:->|=>|\u2192)\s*$")
_ARROW_AFTER = re.compile(r"^\s*(?:->|=>|\u2192)\s*\d")
# what makes a quad of single digits ("8.8.8.8") an address rather than a section or OID number
_ADDRESS_BEFORE = re.compile(r"(?i)\b(?:ip|ips|ipv4|address|addr|host|server|resolver|dns|nameserver|gateway|router|ping|"
                             r"connect|connects|connecting|peer|proxy|via|inet|route)\b[^\n;]{0,24}$")


def _non_identifying(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, link-local, multicast and the unspecified address name no one's machine: every host has them."""
    return address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified


def _ipv4(match: re.Match) -> bool:
    """A dotted quad is an address unless its context says version or numbering, or it names no one's machine."""
    text, end = match.string, match.end()
    before, after = _before(match, 40), text[end:end + 6]
    quad = match.group(0)
    if quad.startswith("0.") or quad.startswith("1.3.6."):  # 0.0.0.0/8 holds no host; 1.3.6 is the OID arc of the Internet
        return False
    if _VERSION_BEFORE.search(before[-14:]) or _NUMBERING_BEFORE.search(before[-20:]):
        return False
    if _ARROW_BEFORE.search(before) or _ARROW_AFTER.search(after):
        return False
    try:
        address = ipaddress.IPv4Address(quad)
    except ValueError:
        return False
    if _non_identifying(address):
        return False
    # single-digit quads are section, OID and version numbers unless something says address
    if all(len(octet) == 1 for octet in quad.split(".")):
        return bool(_ADDRESS_BEFORE.search(before) or re.match(r"[:/]\d", after))
    return True


def _ipv6(match: re.Match) -> bool:
    # "::" alone, hex-looking words like "dead:beef" and namespaces made of hex letters like Perl's "DBD::" or
    # "ABC::Def" (no digit at all) are not addresses worth scrubbing
    text = match.group(0)
    if text.count(":") < 2 or not any(c.isdigit() for c in text):
        return False
    try:
        return not _non_identifying(ipaddress.IPv6Address(text))
    except ValueError:
        return False


_PHONE_CONTEXT = re.compile(r"(?i)\b(?:tel|telephone|phone|call|fax|mobile|cell|contact|sms|whatsapp|dial|ring|hotline|"
                            r"number|no|nr)\b\.?[\s:#]*$")


def _phone(match: re.Match) -> bool:
    """A North American number needs a '+', parentheses, one dash or dot separator used throughout, or a phone word
    before it: three space-separated numbers ("hidden sizes 512 768 2048") are a list."""
    text = match.group(0)
    if text.startswith("+") or "(" in text:
        return True
    separators = set(re.findall(r"[ .-]", text))
    if separators == {" "}:
        return bool(_PHONE_CONTEXT.search(_before(match, 20)))
    return len(separators) == 1


def _shannon(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


_HASH_BEFORE = re.compile(r"(?i)\b(?:sha\d*|md5|checksum|digest|hash|integrity|fingerprint)\b[\s:=\"'-]*$")


def _high_entropy(match: re.Match) -> bool:
    """A random-looking token: mixed case and digits, no word-like lowercase run, entropy of at least 4 bits a
    character. Hex-only strings (hashes, UUIDs) have one case and are left; so are named digests ("sha256-...")."""
    token = match.group(0)
    if not (re.search(r"\d", token) and re.search(r"[A-Z]", token) and re.search(r"[a-z]", token)):
        return False
    if re.search(r"[a-z]{5,}", token) or _HASH_BEFORE.search(_before(match, 16)):
        return False
    if "/" in token and sum(c.isdigit() for c in token) < 2:  # a list of names ("Blade/Image/ProVidia/TGUI/9xxx")
        return False
    return _shannon(token) >= 4.0


# secret-sounding key names, as detect-secrets' KeywordDetector lists them (api_key, aws_secret_access_key, ...)
# a key is the keyword alone or a word of a snake, kebab, dotted or camel name: KOOFR_PASSWORD, db.password, apiToken
_KEY = r"(?:[A-Za-z0-9]*[_.-]|[a-z][a-z0-9]*(?=[A-Z]))?(?i:{words})(?:(?:[_.-][A-Za-z0-9]+)+|[A-Z][A-Za-z0-9]*)?"
_SECRET_KEY = _KEY.format(words=r"secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|auth[_-]?key|credentials?")
_PASSWORD_KEY = _KEY.format(words=r"password|passwd|passphrase|pwd")
# key, optional closing quote, one separator (":" but not "::", "=", ":=", "=>"), optional quote, the value
_ASSIGNED = r"(?<![\w.-])(?:{key})[\"']?\s*(?::(?!:)|:=|=>|=)\s*(?P<q>[\"']?)(?P<secret>(?![<$%{{*])[^\s\"'<>,;`]{{6,}})(?P=q)"


def _looks_secret(match: re.Match) -> bool:
    """A named value is a secret when it is quoted (a config value) or not a plain word: it has a digit, a symbol
    or mixed case."""
    value = match.group("secret")
    if "(" in value or value.endswith(":"):  # code ("pem.Encode(key)") or a heading, not a value
        return False
    if value.lower() in {"true", "false", "null", "none", "required", "optional"}:
        return False
    return bool(match.group("q") or re.search(r"[\d\W_]", value) or (re.search(r"[a-z]", value) and re.search(r"[A-Z]", value)))


DETECTORS: list[Detector] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"), None),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), None),
    ("AWS_ACCESS_KEY", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ABIA|ACCA)[0-9A-Z]{16}\b"), None),
    ("GITHUB_TOKEN", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"), None),
    ("SLACK_TOKEN", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), None),
    # OpenAI/Anthropic, Google, GitLab, Stripe, SendGrid, npm, PyPI
    ("API_KEY", re.compile(r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20}"
                           r"|[sr]k_(?:live|test)_[0-9A-Za-z]{24,}|SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"
                           r"|npm_[A-Za-z0-9]{36}|pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,})(?![\w-])"), None),
    # scheme://user:password@host -> only the password goes
    ("PASSWORD", re.compile(r"(?<=://)(?:[^\s:/@<>]+):(?P<secret>[^\s@/<>]+)(?=@)"), None),
    ("PASSWORD", re.compile(_ASSIGNED.format(key=_PASSWORD_KEY)), _looks_secret),
    ("SECRET", re.compile(_ASSIGNED.format(key=_SECRET_KEY)), _looks_secret),
    # "user@host:path" is an scp-style remote (git@github.com:org/repo.git), "user@host/..." a URL's user: no address
    ("EMAIL", re.compile(r"(?<![\w.+/-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b(?![:/][\w~])"), None),
    # unbroken, or in the groups cards are printed in: 4-4-4-4(-3), Amex 4-6-5, Diners 4-6-4
    ("CREDIT_CARD", re.compile(r"(?<![\d.-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{4,5})(?![\d-]|\.\d)"), _card),
    ("PHONE", re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){3,5}(?![\w.]\d|\w)"), None),
    ("PHONE", re.compile(r"(?<![\w+.])\(?[2-9]\d{2}\)?[ .-]{1,2}[2-9]\d{2}[ .-]\d{4}(?![\w.]\d|\w)"), _phone),
    # not inside a longer dotted run ("1.2.3.4.5" is a version)
    ("IP_ADDRESS", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"), _ipv4),
    ("IP_ADDRESS", re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{3,39}(?![\w:])"), _ipv6),
    ("HIGH_ENTROPY", re.compile(r"(?<![\w+/=.-])[A-Za-z0-9+/_-]{20,}={0,2}(?![\w+/=.-])"), _high_entropy),
]
PII_TYPES = sorted({kind for kind, _, _ in DETECTORS})


def find_pii(text: str) -> list[Finding]:
    """Every PII or secret span in `text`, in text order; no two overlap (an earlier detector wins)."""
    found: list[Finding] = []
    for kind, pattern, valid in DETECTORS:
        for match in pattern.finditer(text):
            if valid and not valid(match):
                continue
            start, end = match.span("secret") if "secret" in pattern.groupindex else match.span()
            if any(start < f.end and f.start < end for f in found):
                continue
            found.append(Finding(kind, start, end, text[start:end]))
    return sorted(found, key=lambda f: f.start)


def scrub_text(text: str) -> tuple[str, Counter]:
    """Replace every detected PII or secret with its typed placeholder; returns the text and counts per type."""
    counts: Counter = Counter()
    pieces, last = [], 0
    for f in find_pii(text):
        pieces += [text[last:f.start], f"<{f.type}>"]
        counts[f.type] += 1
        last = f.end
    return "".join(pieces) + text[last:], counts


def scan_text(text: str) -> Counter:
    """What `scrub_text` would replace, without replacing it: an empty counter means clean."""
    return Counter(f.type for f in find_pii(text))
