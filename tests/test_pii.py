"""PII and secrets are replaced by typed placeholders, what must stay stays, and the blocking check's own detector
finds nothing afterwards."""

import json

import pytest

from bench.pii_bench import score
from pipeline.curation.pii import find_pii, scan_text, scrub_text
from pipeline.paths import PROJECT_ROOT

LABELLED = [json.loads(line) for line in (PROJECT_ROOT / "bench/pii_labelled.jsonl").read_text().splitlines()]

CASES = [
    ("mail jane.doe@example.org now", "mail <EMAIL> now", "EMAIL"),
    ("call +1 415-555-0134 today", "call <PHONE> today", "PHONE"),
    ("call (212) 555-0199 today", "call <PHONE> today", "PHONE"),
    ("host 192.168.1.20 is up", "host <IP_ADDRESS> is up", "IP_ADDRESS"),
    ("host 2001:db8::8a2e:370:7334 is up", "host <IP_ADDRESS> is up", "IP_ADDRESS"),
    ("card 4111 1111 1111 1111 ok", "card <CREDIT_CARD> ok", "CREDIT_CARD"),
    ("key AKIAIOSFODNN7EXAMPLE set", "key <AWS_ACCESS_KEY> set", "AWS_ACCESS_KEY"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789AB set", "token <GITHUB_TOKEN> set", "GITHUB_TOKEN"),
    ("slack xoxb-123456789012-abcdefghij set", "slack <SLACK_TOKEN> set", "SLACK_TOKEN"),
    ("openai sk-abcdefghijklmnopqrstuvwx12 set", "openai <API_KEY> set", "API_KEY"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.abcdefghijk_sig end", "jwt <JWT> end", "JWT"),
    ("db https://admin:s3cr3t!@db.example.com/x", "db https://admin:<PASSWORD>@db.example.com/x", "PASSWORD"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", "<PRIVATE_KEY>", "PRIVATE_KEY"),
    ("password: hunter22", "password: <PASSWORD>", "PASSWORD"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key = <SECRET>", "SECRET"),
    ('"apiToken": "Zx81kQ0pLm"', '"apiToken": "<SECRET>"', "SECRET"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe <API_KEY>", "API_KEY"),
    ("$ erfs mount aDe5F2ik3x35x7pfAEAWdC5Y ~/secure", "$ erfs mount <HIGH_ENTROPY> ~/secure", "HIGH_ENTROPY"),
]


@pytest.mark.parametrize("text,scrubbed,kind", CASES, ids=[c[2] + str(i) for i, c in enumerate(CASES)])
def test_each_kind_is_replaced_by_its_typed_placeholder(text, scrubbed, kind):
    out, counts = scrub_text(text)
    assert out == scrubbed
    assert counts == {kind: 1}
    assert not scan_text(out)


def test_ordinary_technical_text_is_left_alone():
    text = ("Versions 1.2.3 and 2.6.32, Perl HTML::WikiConverter, C++ std::vector, time 12:30:45, "
            "a card-like number failing Luhn 4111 1111 1111 1112, port 8080.")
    assert scrub_text(text) == (text, {})


def test_scan_check_fails_when_a_secret_is_left_in_the_output():
    from assets.curation import no_pii_or_secrets_left

    def rec(text):
        return {"id": text[:8], "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}

    assert no_pii_or_secrets_left(deduped_examples=[rec("Contact <EMAIL> please")]).passed
    failed = no_pii_or_secrets_left(deduped_examples=[rec("Contact <EMAIL> please"), rec("key AKIAIOSFODNN7EXAMPLE")])
    assert not failed.passed
    assert failed.metadata["matches"].value == 1


VERSIONS = ["version 3.0.0.1", "Version: 3.0.0.1", "v 1.2.3.4", "release 2.0.1.7", "ver. 4.8.0.2",
            "btn4ws (0.8.0.1): generates buttons", "> 1.1.1.0 -> 1.1.2", "upgrade 1.1.2 -> 1.1.1.0", "build 10.0.19041.1",
            "libfoo 1.2.3.4.5"]


@pytest.mark.parametrize("text", VERSIONS)
def test_version_strings_shaped_like_ipv4_are_left_alone(text):
    assert scrub_text(text) == (text, {})


ADDRESSES = [("server 10.0.0.1 is down", "server <IP_ADDRESS> is down"),
             ("connect to 203.0.113.7:443 now", "connect to <IP_ADDRESS>:443 now"),
             ("(via: 129.125.90.132:4467)", "(via: <IP_ADDRESS>:4467)"),
             ("server version at 192.168.0.1", "server version at <IP_ADDRESS>"),
             ("resolver 1.1.1.1", "resolver <IP_ADDRESS>"),
             ("gateway (10.1.2.3)", "gateway (<IP_ADDRESS>)")]


@pytest.mark.parametrize("text,scrubbed", ADDRESSES)
def test_real_ipv4_addresses_next_to_version_like_text_are_still_scrubbed(text, scrubbed):
    assert scrub_text(text) == (scrubbed, {"IP_ADDRESS": 1})


def test_perl_namespaces_are_not_ipv6_addresses():
    text = "You also need one of the DBD::* drivers, or ABC::Def."
    assert scrub_text(text) == (text, {})


def test_scan_check_passes_on_version_strings():
    from assets.curation import no_pii_or_secrets_left

    rec = {"id": "v", "messages": [{"role": "user", "content": "What changed in version 3.0.0.1?"},
                                   {"role": "assistant", "content": "1.1.1.0 -> 1.1.2 fixed the build"}]}
    assert no_pii_or_secrets_left(deduped_examples=[rec]).passed


def test_every_labelled_value_is_scrubbed_and_every_value_that_must_stay_stays():
    # the labelled set of bench/pii_bench.py: real Debian excerpts and every shape the scrubber claims
    result = score(LABELLED)
    assert result["missed"] == []
    assert result["scrubbed_negatives"] == []
    kinds = set(result["negatives"])
    assert {"version", "section_number", "oid", "number_list", "git_remote", "hash", "uuid"} <= kinds


@pytest.mark.parametrize("text", ["See section 2.1.3.4 for the wire format.", "SNMP objects live under 1.3.6.1.",
                                  "The model has hidden sizes 512 768 2048.", "git clone git@github.com:org/repo.git",
                                  "commit 9fceb02d0ae598e95dc970b74767f19372d61af8", "UUID=0f8fad5b-d9cb-469f-a165-70867728950e"])
def test_numbers_remotes_hashes_and_uuids_are_left_alone(text):
    assert scrub_text(text) == (text, {})


def test_findings_give_each_type_and_span_for_callers_that_count_per_type():
    text = "mail a.b@example.org, key AKIAIOSFODNN7EXAMPLE, mail c@example.org"
    found = find_pii(text)
    assert [(f.type, text[f.start:f.end]) for f in found] == [
        ("EMAIL", "a.b@example.org"), ("AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE"), ("EMAIL", "c@example.org")]
    assert scan_text(text) == {"EMAIL": 2, "AWS_ACCESS_KEY": 1}


def _record(text: str) -> dict:
    return {"id": text[:8], "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}


def test_the_check_does_not_use_the_scrubber_so_it_catches_what_the_scrubber_misses(monkeypatch):
    from assets.curation import no_pii_or_secrets_left

    monkeypatch.setattr("pipeline.curation.pii.find_pii", lambda text: [])  # a scrubber that finds nothing
    for leaked in ["key AKIAIOSFODNN7EXAMPLE", "mail jane.doe@example.org", "call +1 415-555-0134",
                   'password = "hunter22"', "card 4111 1111 1111 1111", "connect to 203.0.113.7:443"]:
        assert not no_pii_or_secrets_left(deduped_examples=[_record(leaked)]).passed, leaked


def test_the_check_passes_on_the_scrubbed_labelled_set():
    from assets.curation import no_pii_or_secrets_left

    result = no_pii_or_secrets_left(deduped_examples=[_record(scrub_text(row["text"])[0]) for row in LABELLED])
    assert result.passed, result.metadata["examples"]
