"""Normalisation of every supported shape, and the reason code of every malformed case."""

import pytest

from pipeline.curation.formats import MalformedRecord, normalise

USER, ANSWER = "Summarise: a tool.", "A tool"


@pytest.mark.parametrize(
    "raw,shape",
    [
        ({"instruction": "Summarise:", "input": "a tool.", "output": ANSWER}, "alpaca"),
        ({"conversations": [{"from": "human", "value": USER}, {"from": "gpt", "value": ANSWER}]}, "sharegpt"),
        ({"messages": [{"role": "user", "content": USER}, {"role": "assistant", "content": ANSWER}]}, "chatml"),
    ],
)
def test_each_shape_normalises_to_the_same_messages(raw, shape):
    detected, messages = normalise(raw)
    assert detected == shape
    assert messages[-1] == {"role": "assistant", "content": ANSWER}
    assert messages[0]["role"] == "user" and "a tool." in messages[0]["content"]


def test_system_turns_are_kept_first():
    _, messages = normalise({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": USER},
                                          {"role": "assistant", "content": ANSWER}]})
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    "raw,reason",
    [
        ([1, 2], "not_an_object"),
        ({"text": "no known keys"}, "unknown_format"),
        ({"instruction": 3, "output": "x"}, "wrong_type"),
        ({"instruction": "do it", "output": "  "}, "empty_assistant"),
        ({"messages": "not a list"}, "wrong_type"),
        ({"messages": [{"role": "user", "content": USER}]}, "missing_turn"),
        ({"messages": [{"role": "assistant", "content": ANSWER}, {"role": "user", "content": USER}]}, "role_order"),
        ({"messages": [{"role": "robot", "content": USER}, {"role": "assistant", "content": ANSWER}]}, "unknown_role"),
        ({"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": ANSWER}]}, "wrong_type"),
    ],
)
def test_malformed_records_raise_with_a_reason(raw, reason):
    with pytest.raises(MalformedRecord) as err:
        normalise(raw)
    assert err.value.reason == reason


def test_preference_pairs_of_strings_or_message_lists_keep_their_rejected_side():
    from pipeline.curation.formats import rejected_of

    flat = {"prompt": "Summarise X", "chosen": "good", "rejected": "bad"}
    assert normalise(flat) == ("preference", [{"role": "user", "content": "Summarise X"},
                                              {"role": "assistant", "content": "good"}])
    assert rejected_of(flat)[-1] == {"role": "assistant", "content": "bad"}
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Summarise X"}]
    lists = {"chosen": conversation + [{"role": "assistant", "content": "good"}],
             "rejected": conversation + [{"role": "assistant", "content": "bad"}]}
    assert normalise(lists)[1] == lists["chosen"]
    assert rejected_of(lists) == lists["rejected"]


def test_a_preference_pair_with_an_empty_rejected_answer_is_malformed():
    from pipeline.curation.formats import rejected_of

    with pytest.raises(MalformedRecord, match="rejected_empty_assistant"):
        rejected_of({"prompt": "Summarise X", "chosen": "good", "rejected": " "})
