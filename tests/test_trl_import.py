"""TRL imported without scanning every installed distribution, with the versions it would have found."""

import importlib.metadata
import json
import subprocess
import sys

from pipeline.training.trl_import import DistributionsOnFirstUse


def test_a_package_with_a_distribution_of_its_name_is_answered_without_a_scan():
    scans = []

    def scan():
        scans.append(1)
        return importlib.metadata.packages_distributions()

    full = importlib.metadata.packages_distributions()
    distributions = DistributionsOnFirstUse(scan)
    for package in ("transformers", "packaging"):
        assert distributions[package][0] in full[package]
    assert scans == []
    assert distributions["yaml"] == full["yaml"]  # imported as yaml, distributed as PyYAML: only a scan tells
    assert scans == [1]
    assert dict(distributions) == full
    assert scans == [1]


def test_trl_imported_this_way_finds_the_installed_versions_without_a_scan():
    # a fresh interpreter: TRL reads the map when it is first imported
    probe = """
import importlib.metadata, json
from pipeline.training.trl_import import import_trl
import_trl()
import trl.import_utils as iu
print(json.dumps({"scanned": iu.PACKAGE_DISTRIBUTION_MAPPING._map is not None,
                  "versions": {p: iu._is_package_available(p, return_version=True)[1]
                               for p in ("transformers", "peft", "torch")}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["scanned"] is False
    assert found["versions"] == {p: importlib.metadata.version(p) for p in ("transformers", "peft", "torch")}
