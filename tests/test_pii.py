"""PII and secrets are replaced by typed placeholders, and the scan finds nothing afterwards."""

import pytest

from pipeline.curation.pii import scan_text, scrub_text

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
