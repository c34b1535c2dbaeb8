"""Token lengths come from the chat template, and the summary counts what max_length would truncate."""

from transformers import AutoTokenizer

from pipeline.curation.token_stats import histogram_png, length_summary, token_lengths


def _record(prompt: str, answer: str) -> dict:
    return {"id": prompt, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def test_lengths_include_the_chat_template_and_grow_with_the_text(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short, long = token_lengths([_record("Summarise zlib", "compression"),
                                 _record("Summarise zlib " * 20, "compression")], tokenizer)
    bare = len(tokenizer("Summarise zlib")["input_ids"]) + len(tokenizer("compression")["input_ids"])
    assert short > bare  # role markers and separators of the template count too
    assert long > short


def test_summary_counts_truncated_examples_and_percentiles():
    summary = length_summary([10, 20, 30, 400, 500], max_length=384)
    assert summary["truncated"] == 2
    assert (summary["min"], summary["p50"], summary["max"]) == (10, 30, 500)


def test_histogram_is_a_png():
    assert histogram_png([10, 20, 30], max_length=25).startswith(b"\x89PNG")
