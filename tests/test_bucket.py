"""The bucket and the IO manager work the same on a local folder and on S3 (moto stands in for S3)."""

import boto3
import dagster as dg
import pytest
from moto import mock_aws

from resources import Bucket, BucketJsonIOManager


@pytest.fixture
def s3_bucket(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        # a fresh cache per test: a download that fetched nothing must not pass on an earlier run's copies
        yield Bucket(root="s3://models/pipeline", cache_dir=str(tmp_path_factory.mktemp("s3-cache")))


@pytest.mark.parametrize("root_kind", ["local", "s3"])
def test_exists_means_an_object_with_exactly_that_key_on_both(root_kind, s3_bucket, tmp_path):
    bucket = s3_bucket if root_kind == "s3" else Bucket(root=str(tmp_path / "store"))
    bucket.write_bytes("a/b.json", b"{}")
    assert bucket.exists("a/b.json")
    assert not bucket.exists("a/missing")
    assert not bucket.exists("a")  # a folder, or a prefix of keys, is not an object
    assert not bucket.exists("a/b.js")  # a prefix of a key is not that key


def test_s3_round_trip_of_objects_and_folders(s3_bucket, tmp_path):
    s3_bucket.write_bytes("a/b.json", b"{}")
    assert s3_bucket.read_bytes("a/b.json") == b"{}"
    (tmp_path / "adapter" / "sub").mkdir(parents=True)
    (tmp_path / "adapter" / "weights.safetensors").write_bytes(b"w")
    (tmp_path / "adapter" / "sub" / "config.json").write_text("{}")
    assert s3_bucket.upload_dir(tmp_path / "adapter", "runs/1/adapter") == "s3://models/pipeline/runs/1/adapter"
    local = s3_bucket.download_dir("runs/1/adapter")
    assert local.is_relative_to(s3_bucket.cache_dir) and local != tmp_path / "adapter"
    assert (local / "weights.safetensors").read_bytes() == b"w"
    assert (local / "sub" / "config.json").read_text() == "{}"


def test_local_writes_are_atomic_and_readable(tmp_path):
    bucket = Bucket(root=str(tmp_path))
    bucket.write_bytes("x/y.jsonl", b"1\n")
    assert (tmp_path / "x" / "y.jsonl").read_bytes() == b"1\n"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("root_kind", ["local", "s3"])
def test_io_manager_stores_records_as_jsonl_and_dicts_as_json(root_kind, s3_bucket, tmp_path):
    bucket = s3_bucket if root_kind == "s3" else Bucket(root=str(tmp_path))

    @dg.asset
    def records() -> list:
        return [{"id": "1", "text": "é"}, {"id": "2"}]

    @dg.asset
    def summary(records: list) -> dict:
        return {"n": len(records)}

    result = dg.materialize([records, summary], resources={"io_manager": BucketJsonIOManager(bucket=bucket)})
    assert result.success
    assert bucket.read_bytes("assets/records.jsonl").decode().splitlines()[0] == '{"id": "1", "text": "é"}'
    assert result.output_for_node("summary") == {"n": 2}


def test_s3_sources_are_read_through_the_bucket_resource(s3_bucket):
    import json

    from assets.sources import stage_remote_sources
    from pipeline.curation.steps import read_sources
    from pipeline.recipe import DataRecipe, SourceSpec

    row = json.dumps({"instruction": "Summarise zlib", "output": "compression library"}).encode() + b"\n"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="raw")
    s3.put_object(Bucket="raw", Key="one/alpaca.jsonl", Body=row)
    s3.put_object(Bucket="raw", Key="many/a.jsonl", Body=row + b"{broken\n")
    s3.put_object(Bucket="raw", Key="many/b.jsonl", Body=row)
    data = DataRecipe(sources=[SourceSpec(path="s3://raw/one/alpaca.jsonl"), SourceSpec(path="s3://raw/many")])
    result = read_sources(stage_remote_sources(data, s3_bucket))
    assert [r["origin"]["file"] for r in result.records] == ["alpaca.jsonl", "many/a.jsonl", "many/b.jsonl"]
    assert [(q["file"], q["line"], q["reason"]) for q in result.quarantined] == [("many/a.jsonl", 2, "invalid_json")]
