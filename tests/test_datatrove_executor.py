"""The `datatrove` near-dup engine runs datatrove's stages under the executor the recipe names: local or Ray."""

import sys

import pytest

from pipeline.curation.datatrove_minhash import drop_near_duplicates_with_datatrove
from pipeline.recipe import NearDupRecipe
from tests.test_curation import _record, _words

# datatrove's own pipeline has no similarity check, so its bands x rows are set for the threshold
ENGINE = dict(engine="datatrove", shingle_size=2, bands=4, rows=4)  # few bands: few Ray tasks


def _records() -> list[dict]:
    text = _words(120, seed=1)
    return [_record(text), _record(_words(120, seed=2)), _record(text.replace(text.split()[10], "changed", 1) + " extra.")]


@pytest.fixture
def local_ray():
    import ray  # in the test extra, so the executor is tested wherever the suite runs

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_finds_the_same_clusters_as_the_local_one(local_ray, tmp_path):
    records = _records()
    local = drop_near_duplicates_with_datatrove(records, NearDupRecipe(**ENGINE))
    on_ray = drop_near_duplicates_with_datatrove(records, NearDupRecipe(**ENGINE, executor="ray", workers=2,
                                                                        scratch_dir=str(tmp_path)))
    assert on_ray.clusters == local.clusters == [[records[0]["id"], records[2]["id"]]]


def test_ray_executor_without_ray_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees
    with pytest.raises(RuntimeError, match=r"pip install 'llm-finetune-pipeline\[ray\]'"):
        drop_near_duplicates_with_datatrove(_records(), NearDupRecipe(**ENGINE, executor="ray"))


def test_ray_is_an_optional_extra_not_a_core_dependency():
    import tomllib

    from pipeline.paths import PROJECT_ROOT

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("ray") for dep in project["dependencies"])
    assert any(dep.startswith("ray") for dep in project["optional-dependencies"]["ray"])
