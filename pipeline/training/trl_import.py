"""Import TRL without its scan of every installed distribution.

TRL's `import_utils` builds `importlib.metadata.packages_distributions()` when it is imported: it reads the
metadata and file list of every distribution in the environment (0.96 s of a training process's start on the H200
machine, 0.6-1.4 s on the CI machine) to find which distribution provides a package, for the versions of
transformers and peft it checks on import. transformers builds the same map only when it needs it. Imported
through `import_trl`, TRL gets a map that answers a package with the distribution of the same name (what TRL picks
first among a package's distributions) and scans only for a package without one.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


class DistributionsOnFirstUse(Mapping):
    """`packages_distributions()`'s map (top-level package -> distributions), built on first use; until then a
    package that has a distribution of its own name maps to that one."""

    def __init__(self, scan: Callable[[], Mapping[str, list[str]]]) -> None:
        self._scan, self._map = scan, None

    def _built(self) -> Mapping[str, list[str]]:
        if self._map is None:
            self._map = self._scan()
        return self._map

    def __getitem__(self, package: str) -> list[str]:
        if self._map is None:
            try:  # a lookup by normalised name: one directory listing per path entry, not every distribution's files
                return [importlib.metadata.distribution(package).metadata["Name"]]
            except importlib.metadata.PackageNotFoundError:
                pass
        return self._built()[package]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


@contextmanager
def _distributions_scanned_on_use():
    scan = importlib.metadata.packages_distributions
    importlib.metadata.packages_distributions = lambda: DistributionsOnFirstUse(scan)
    try:
        yield
    finally:
        importlib.metadata.packages_distributions = scan


def import_trl() -> None:
    """Import `trl` (a no-op once imported); callers then import from it as usual."""
    if "trl" in sys.modules:
        return
    with _distributions_scanned_on_use():
        import trl  # noqa: F401
        import trl.import_utils  # noqa: F401  where the map is built, whether or not `trl` imports it eagerly
