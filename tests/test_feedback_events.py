"""Reading the feedback bucket's contract (FEEDBACK.md) and turning events into examples, without Dagster."""

import gzip
import json

import pytest

from pipeline.feedback.aggregate import feedback_by_model_version
from pipeline.feedback.events import gunzip_lines, read_day
from pipeline.feedback.examples import day_examples
from pipeline.feedback.trigger import changed_days, new_examples_since

DAY = "2026-11-20"
PROMPT = [{"role": "user", "content": "Write the one-line summary of this Debian package from its description.\n\nzlib is a library"}]


def interaction(i, version="7", response="a game", day=DAY):
    return {"kind": "interaction", "id": f"i{i}", "ts": f"{day}T10:00:0{i % 10}.000Z", "messages": PROMPT,
            "response": response, "model": {"name": "m", "version": version, "alias": "canary"}, "extra": {"kept": True}}


def feedback(i, interaction_id, **fields):
    return {"kind": "feedback", "id": f"f{i}", "ts": f"{DAY}T11:00:00.000Z", "interaction_id": interaction_id, **fields}


def gz(events) -> bytes:
    return gzip.compress("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events).encode())


def test_truncated_and_corrupt_objects_keep_what_came_before_the_damage():
    body = gz([interaction(i) for i in range(50)])
    lines, damage = gunzip_lines(body[: len(body) - 40])
    assert damage[0] == "truncated_gzip" and 0 < len(lines) < 50
    assert all(json.loads(line)["kind"] == "interaction" for line in lines)  # whole lines only
    garbled = body[:30] + bytes(b ^ 0xFF for b in body[30:60]) + body[60:]
    lines, damage = gunzip_lines(garbled)
    assert damage[0] == "corrupt_gzip"
    two_members = gz([interaction(1)]) + gz([interaction(2)])
    assert gunzip_lines(two_members) == ([json.dumps(interaction(1)).encode(), json.dumps(interaction(2)).encode()], None)


@pytest.mark.parametrize("line, reason", [
    ("{not json", "invalid_json"),
    (json.dumps([1, 2]), "not_an_object"),
    (json.dumps({**interaction(1), "kind": "click"}), "unknown_kind"),
    (json.dumps({**interaction(1), "ts": "2026-11-21T00:00:01.000Z"}), "wrong_day"),
    (json.dumps({**interaction(1), "ts": "yesterday"}), "bad_timestamp"),
    (json.dumps({**interaction(1), "messages": [{"role": "assistant", "content": "hi"}]}), "bad_messages"),
    (json.dumps(feedback(1, "i1", rating=5)), "bad_rating"),
    (json.dumps(feedback(1, "i1")), "empty_feedback"),
    (json.dumps({"kind": "comparison", "id": "c", "ts": f"{DAY}T01:00:00Z", "messages": PROMPT, "a": {"response": "x",
                 "model": {"version": "1"}}, "b": {"response": "y", "model": {"version": "2"}}, "winner": "c"}), "bad_winner"),
])
def test_a_bad_line_is_quarantined_with_key_line_and_reason_and_the_rest_is_read(line, reason):
    read = read_day(DAY, [(f"feedback/dt={DAY}/w-1.jsonl.gz", "etag", gz([interaction(1), line, interaction(2)]))])
    assert [e["id"] for e in read.events] == ["i1", "i2"]
    assert [(q["key"], q["line"], q["reason"]) for q in read.quarantined] == [(f"feedback/dt={DAY}/w-1.jsonl.gz", 2, reason)]
    assert read.balanced()


def test_repeated_event_ids_are_counted_once_unknown_fields_kept_and_secrets_never_stored_raw():
    secret_line = '{"kind": "feedback", "id": "x", "correction": "key AKIAABCDEFGHIJKLMNOP", broken'
    read = read_day(DAY, [("feedback/dt=2026-11-20/a.jsonl.gz", "1", gz([interaction(1), secret_line])),
                          ("feedback/dt=2026-11-20/b.jsonl.gz", "2", gz([interaction(1)]))])
    assert len(read.events) == 1 and read.duplicates == 1 and read.balanced()
    assert read.events[0]["extra"] == {"kept": True}
    assert "AKIA" not in read.quarantined[0]["raw"] and "<AWS_ACCESS_KEY>" in read.quarantined[0]["raw"]
    assert [o["lines"] for o in read.objects] == [2, 1]


def test_every_event_gets_one_outcome_and_feedback_finds_yesterdays_interaction():
    yesterday = interaction(9, response="old answer", day="2026-11-19")
    events = [interaction(1), interaction(2, response="zlib compression library"),
              feedback(1, "i1", rating=-1, correction="compression library"),
              feedback(2, "i2", rating=1),
              feedback(3, "i2", correction="zlib compression library"),  # same as served: SFT only
              feedback(4, "missing", rating=-1, correction="x"),
              feedback(5, "i9", correction="compression library for zlib"),
              {"kind": "comparison", "id": "c1", "ts": f"{DAY}T12:00:00Z", "messages": PROMPT, "winner": "tie",
               "a": {"response": "x", "model": {"version": "1"}}, "b": {"response": "y", "model": {"version": "2"}}},
              {"kind": "comparison", "id": "c2", "ts": f"{DAY}T12:00:00Z", "messages": PROMPT, "winner": "b",
               "a": {"response": "a game", "model": {"version": "1"}}, "b": {"response": "compression", "model": {"version": "2"}}}]
    made = day_examples(DAY, events, {"i9": yesterday})
    assert sum(made.outcomes.values()) == len(events)
    assert made.outcomes == {"interaction": 2, "correction_and_pair": 2, "rating_only": 1, "correction_equals_response": 1,
                             "orphan_feedback": 1, "comparison_tie": 1, "comparison_pair": 1}
    assert [r["messages"][-1]["content"] for r in made.sft] == ["compression library", "zlib compression library",
                                                                 "compression library for zlib"]
    pair = made.pairs[-1]
    assert pair["messages"][-1]["content"] == "compression" and pair["meta"]["rejected"][-1]["content"] == "a game"
    assert all(r["origin"]["partition"] == DAY and r["source"] == "feedback" for r in made.sft + made.pairs)


def test_live_feedback_is_aggregated_per_served_model_version():
    events = [interaction(1, "6"), interaction(2, "7"), interaction(3, "7"),
              feedback(1, "i1", rating=1), feedback(2, "i2", rating=-1, correction="better"), feedback(3, "i3", rating=1),
              {"kind": "comparison", "id": "c", "ts": "", "messages": PROMPT, "winner": "a",
               "a": {"response": "x", "model": {"version": "7"}}, "b": {"response": "y", "model": {"version": "6"}}}]
    stats = feedback_by_model_version(events)
    assert stats["7"] == {"interactions": 2, "ratings_up": 1, "ratings_down": 1, "corrections": 1,
                          "comparison_wins": 1, "comparison_losses": 0, "comparison_ties": 0}
    assert stats["6"]["ratings_up"] == 1 and stats["6"]["comparison_losses"] == 1


def test_cursor_sees_new_days_new_objects_and_changed_etags_and_nothing_else():
    listing = [(f"feedback/dt={DAY}/a.jsonl.gz", "e1"), ("feedback/dt=2026-11-21/a.jsonl.gz", "e2"), ("feedback/README", "x")]
    changed, cursor = changed_days(listing, {})
    assert sorted(changed) == [DAY, "2026-11-21"] and not any(c["late"] for c in changed.values())
    assert changed_days(listing, cursor)[0] == {}
    late, _ = changed_days(listing + [(f"feedback/dt={DAY}/b.jsonl.gz", "e3")], cursor)
    assert list(late) == [DAY] and late[DAY]["late"] and late[DAY]["new_objects"] == 1
    rewritten, _ = changed_days([(f"feedback/dt={DAY}/a.jsonl.gz", "e9"), listing[1]], cursor)
    assert list(rewritten) == [DAY]


def test_new_examples_count_days_the_champion_never_saw_and_what_changed_days_gained():
    trained = {"2026-11-19": ("v1", 10), DAY: ("v2", 5)}
    assert new_examples_since(trained, trained) == (0, [])
    assert new_examples_since({**trained, DAY: ("v3", 8), "2026-11-21": ("v4", 4)}, trained) == (7, [f"{DAY}: +3", "2026-11-21: +4"])
