"""Format compliance, bootstrap intervals and slices."""

import pytest

from pipeline.evaluation.report_html import headline_rows, html_report, markdown_summary
from pipeline.evaluation.slices import bootstrap_ci, format_compliance, slice_table
from pipeline.recipe import FormatRecipe


def test_no_format_in_the_recipe_means_not_measured():
    assert format_compliance(["anything"], FormatRecipe(regex=None)) is None


def test_regex_format_must_match_the_whole_answer():
    fmt = FormatRecipe(regex=r"[^\n]{1,40}(?<!\.)")
    assert format_compliance(["JSON parser for Go", "Ends with a period.", "two\nlines", "x" * 41], fmt) == \
        [True, False, False, False]


def test_json_schema_format_needs_valid_json_that_validates():
    fmt = FormatRecipe(json_schema={"type": "object", "required": ["summary"],
                                    "properties": {"summary": {"type": "string", "maxLength": 20}}})
    assert format_compliance(['{"summary": "a parser"}', '{"summary": 3}', "not json", '{"other": "x"}'], fmt) == \
        [True, False, False, False]


def test_a_bad_schema_is_an_error_not_a_zero_score():
    from jsonschema.exceptions import SchemaError

    with pytest.raises(SchemaError):
        format_compliance(["{}"], FormatRecipe(json_schema={"type": "no-such-type"}))


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [0.0, 1.0] * 20 + [1.0] * 10
    low, high = bootstrap_ci(values, 500, 0.95)
    assert (low, high) == bootstrap_ci(values, 500, 0.95)
    assert low < sum(values) / len(values) < high and high - low < 0.4
    assert bootstrap_ci([0.5] * 5, 500, 0.95) == (0.5, 0.5)


def test_slices_cover_file_shape_group_size_and_answer_length():
    def ex(i, group, answer, fmt):
        return {"id": str(i), "group": group, "origin": {"file": f"data/sample/{fmt}.jsonl", "line": i, "format": fmt},
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}

    examples = [ex(0, "a", "short one", "alpaca"), ex(1, "a", "a much longer reference answer of many words", "chatml"),
                ex(2, "b", "short", "chatml")]
    rows = {(r["dimension"], r["slice"]): r for r in slice_table(examples, "rouge_l", {"base": [0.0, 0.5, 1.0]})}
    assert rows[("source_file", "chatml.jsonl")]["base_rouge_l"] == 0.75
    assert rows[("shape", "alpaca")]["examples"] == 1
    assert rows[("group_size", "2-3")]["examples"] == 2 and rows[("group_size", "1")]["base_rouge_l"] == 1.0
    assert rows[("answer_length", "1-5 words")]["examples"] == 2


def test_summary_and_html_show_the_gate_reason_and_escape_answers():
    report = {"examples": 1, "confidence": 0.95, "models": {"base": {"loss": 2.0, "perplexity": 7.4, "rouge_l": 0.1},
                                                            "candidate": {"loss": 1.5, "perplexity": 4.5, "rouge_l": 0.3}},
              "intervals": {"candidate_rouge_l": (0.2, 0.4)}, "gate": {"no_eval_contamination": ["1 of 1 heldout leaked"]},
              "table": [{"id": "x", "candidate_answer": "<script>alert(1)</script>"}],
              "judge": {"base": {"judge": "reference:rouge_l", "win_rate": 0.6, "order_agreement": 0.8, "wins": 1, "ties": 0,
                                 "losses": 0, "win_rate_candidate_first_only": 0.6, "invalid_verdicts": 0, "rows": []}}}
    summary = markdown_summary(report)
    assert "blocked" in summary and "1 of 1 heldout leaked" in summary and "0.3000 [0.200, 0.400]" in summary
    rows = headline_rows(report)  # one set of columns for every model, as Dagster's table metadata needs
    assert len({tuple(r) for r in rows}) == 1 and rows[1]["candidate_win_rate_vs_this"] is None
    page = html_report(report, "t")
    assert "<script>alert" not in page and "&lt;script&gt;" in page
