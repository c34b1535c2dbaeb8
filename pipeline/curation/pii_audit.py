"""A second opinion on scrubbed text, sharing no code with the scrubber (`pii.py`), so it can catch what it misses.

Secrets: detect-secrets' own plugins (quoted keyword-named values, every provider key shape it knows, URL passwords,
base64 high-entropy strings) and its false-positive heuristics. Phones: Google's libphonenumber rules
(`phonenumbers`). E-mail, card and IP: whole whitespace-separated tokens checked by validators (`ipaddress`, Luhn).
Hex high-entropy strings and public-IP plugins are left out on purpose: hashes and UUIDs stay in the data, and an
address needs context (a port, a prefix length, a URL or a word like "host") before it counts here.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from functools import lru_cache

# a text file: detect-secrets' default for text that is not a known config format (a keyword's value needs quotes;
# the YAML reading flagged prose such as "Empty passwords: ErrEmpty" in the real descriptions)
_AS_FILE = "record.txt"
_DIGEST = re.compile(r"(?i)^(?:sha\d+|md5)[-:]")  # a named digest ("sha384-..." in an integrity attribute)
_LEFT_OUT = {"HexHighEntropyString", "IPPublicDetector"}
_PLACEHOLDER = re.compile(r"<[A-Z_]+>")


@lru_cache(maxsize=1)
def _secret_plugins() -> tuple:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    return tuple(cls() for cls in get_mapping_from_secret_type_to_class().values() if cls.__name__ not in _LEFT_OUT)


def _noise(secret: str, line: str) -> bool:
    """detect-secrets' own heuristics for values that are not secrets (sequences, UUIDs, templates, references)."""
    from detect_secrets.filters import heuristic

    return (heuristic.is_sequential_string(secret) or heuristic.is_potential_uuid(secret)
            or heuristic.is_templated_secret(secret) or heuristic.is_prefixed_with_dollar_sign(secret)
            or heuristic.is_not_alphanumeric_string(secret) or heuristic.is_indirect_reference(line)
            or bool(_PLACEHOLDER.fullmatch(secret.strip("\"'")) or _DIGEST.match(secret)))


def _in_url(secret: str, line: str) -> bool:
    """Part of a link's path ("medium.com/@user/title-945ab749056c"): random-looking, but published, not a secret."""
    return any(secret in token and "://" in token for token in line.split())


def secrets_in(text: str) -> Counter:
    """Secret types detect-secrets finds, line by line (its high-entropy plugin also without quotes)."""
    from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin

    found: Counter = Counter()
    for line in text.splitlines():
        for plugin in _secret_plugins():
            if isinstance(plugin, HighEntropyStringsPlugin):
                with plugin.non_quoted_string_regex(is_exact_match=False):
                    hits = [s for s in plugin.analyze_line(filename=_AS_FILE, line=line)
                            if plugin.calculate_shannon_entropy(s.secret_value) > plugin.entropy_limit
                            and not _in_url(s.secret_value, line)]
            else:
                hits = plugin.analyze_line(filename=_AS_FILE, line=line)
            for hit in hits:
                if hit.secret_value and not _noise(hit.secret_value, line):
                    found[hit.type] += 1
    return found


def phones_in(text: str) -> int:
    """Valid phone numbers written as phone numbers: a '+', parentheses or dash/dot groups, not a list of numbers."""
    import phonenumbers

    return sum(1 for m in phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.VALID)
               if "+" in m.raw_string or "(" in m.raw_string or len(re.findall(r"\d[-.]\d", m.raw_string)) >= 2)


_TOKEN_EDGES = "\"'()[]{}<>,;!?*`"
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}")
_ADDRESS_WORDS = {"ip", "address", "addr", "host", "server", "resolver", "dns", "gateway", "router", "ping", "connect",
                  "peer", "proxy", "via", "from", "to", "inet", "nameserver"}


def _address(token: str, previous: list[str]) -> bool:
    """An IP written as one: with a port or prefix length, in a URL, or after an address word."""
    shape = re.fullmatch(r"(?:[a-z]+://)?([0-9A-Fa-f.:\[\]]+?)((?::\d+|/\d+)?)(?:/\S*)?", token)
    if not shape:
        return False
    host, rest = shape.groups()
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified:
        return False
    if address.version == 6:
        return True
    return bool(rest or "://" in token or _ADDRESS_WORDS & {w.lower().strip(":=") for w in previous[-3:]})


def _card(token: str) -> bool:
    digits = [int(c) for c in token if c.isdigit()]
    if not 13 <= len(digits) <= 19 or not re.fullmatch(r"\d+(?:[ -]\d+)*", token):
        return False
    checksum = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return checksum % 10 == 0 and 2 <= digits[0] <= 6


def pii_in(text: str) -> Counter:
    """E-mail addresses, card numbers and IP addresses as whole tokens, plus phone numbers."""
    found: Counter = Counter()
    tokens = [t.strip(_TOKEN_EDGES).rstrip(".:") for t in re.split(r"[\s,;]+", text)]
    for i, token in enumerate(tokens):
        if token.count("@") == 1 and "://" not in token and _EMAIL.fullmatch(token.removeprefix("mailto:")):
            found["EMAIL"] += 1
        elif _address(token, tokens[max(0, i - 3):i]):
            found["IP_ADDRESS"] += 1
    # card numbers are printed in groups: join runs of digit groups before checking
    for run in re.findall(r"(?<![\d.-])\d{4}(?:[ -]?\d{2,6}){2,4}(?![\d-])", text):
        if _card(run):
            found["CREDIT_CARD"] += 1
    if phones := phones_in(text):
        found["PHONE"] += phones
    return found


def audit_text(text: str) -> Counter:
    """Everything this independent detector finds: detect-secrets' secret types and PII types, with counts."""
    return secrets_in(text) + pii_in(text)
