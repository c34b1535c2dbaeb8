"""Cheaper look-ups in the bookkeeping of CUDA graph trees (`torch._inductor.cudagraph_trees`) while they record.

Before a compiled block's graph is recorded, each of its inputs is checked against every output recorded before it on
the step's path (is it one of them, and is that one still alive?), and the liveness of every such output is listed.
The stock checks build the input's storage object again and dereference the output's weak reference for every pair,
in Python. A LoRA step of the ~1B shape records 32 graphs per row length (16 blocks, forward and backward), each
with dozens of inputs, against a path that grows to hundreds of outputs: 3.9M weak-reference checks in a 5k-example
run. On the H200, recording a row length took 1.2-1.9 s with these checks and 0.4-0.7 s with the ones below, and a
cached 5k run 28-30 s against 22-26 s (bench/results/README.md, eighth session).

The replacements give the same answers in the same order: the input's data pointer is read once, and an output's
weak reference is checked only when its recorded data pointer matches. They are installed only over methods whose
statements are exactly the ones they replace (compared as syntax trees), so a torch that changes them keeps its own.
`PIPELINE_STOCK_GRAPH_RECORDING=1` keeps torch's own in any case.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from typing import Any, Callable

# The statements of the torch methods replaced here, as torch has had them for many releases (checked: 2.11, 2.13),
# docstrings, comments and annotations aside; a method may have several accepted versions.
_STOCK_BODIES: dict[str, str | tuple[str, ...]] = {
    "_is_cuda_graph_recorded_tensor": """
        for output_refs in self.path_weakrefs:
            for storage_weak_ref in output_refs:
                if storage_weak_ref is None:
                    continue
                data_ptr = storage_weak_ref.data_ptr()
                if t.untyped_storage().data_ptr() == data_ptr:
                    return True
        return False
    """,
    "_is_alias_of_live_recorded_tensor": tuple(
        f"""
        for depth, output_refs in enumerate(self.path_weakrefs):
            for output_index, storage_ref in enumerate(output_refs):
                if (storage_and_ptr := maybe_deref(storage_ref)) is not None:
                    {unused}, ptr = storage_and_ptr
                    if ptr == t.untyped_storage().data_ptr():
                        return (depth, output_index)
        return None
        """ for unused in ("storage", "_storage")),  # both spellings have shipped
    "_get_liveness": """
        if len(weakrefs) == 0:
            return []
        return [pytree.tree_map(is_live, outputs) for outputs in weakrefs]
    """,
}


def _is_cuda_graph_recorded_tensor(self: Any, t: Any) -> bool:
    "Is this tensor an output of a node in this path (live or not: graph-managed memory is never released)"
    ptr = t.untyped_storage().data_ptr()
    return any(ref is not None and ref.data_ptr() == ptr for refs in self.path_weakrefs for ref in refs)


def _is_alias_of_live_recorded_tensor(self: Any, t: Any) -> tuple[int, int] | None:
    "Where on the path the first live output with this tensor's storage is, if any"
    ptr = t.untyped_storage().data_ptr()
    for depth, output_refs in enumerate(self.path_weakrefs):
        for output_index, ref in enumerate(output_refs):
            # the recorded pointer first: it is what the stock check compares, and reading it costs no C call
            if ref is not None and ref.data_ptr() == ptr and ref() is not None:
                return depth, output_index
    return None


def _liveness(is_live: Callable[[Any], bool], for_none: bool | None) -> Callable:
    """`_get_liveness` without a tree map per node: the lists hold only weak references and None, and None maps to
    what the installed pytree gives it (False where None is a leaf, as in torch 2.13; None where it is a node)."""

    def _get_liveness(weakrefs: list[list[Any]]) -> list[list[bool | None]]:
        return [[for_none if ref is None else is_live(ref) for ref in outputs] for outputs in weakrefs]

    return _get_liveness


def _dump(statements: list[ast.stmt]) -> str:
    return "\n".join(ast.dump(statement) for statement in statements)


def _statements(function: Any) -> str:
    """The function's statements as a syntax tree dump: formatting, comments, annotations and docstring aside."""
    body = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return _dump(body)


def _stock(name: str) -> set[str]:
    bodies = _STOCK_BODIES[name]
    return {_dump(ast.parse(textwrap.dedent(body)).body) for body in ((bodies,) if isinstance(bodies, str) else bodies)}


def stock_methods_differ(node_class: Any) -> list[str]:
    """The names of the methods to replace whose statements are not the stock ones (or cannot be read)."""
    differ = []
    for name in _STOCK_BODIES:
        method = inspect.getattr_static(node_class, name, None)
        try:
            same = _statements(getattr(method, "__func__", method)) in _stock(name)  # a staticmethod's function
        except (OSError, TypeError, SyntaxError):
            same = False
        if not same:
            differ.append(name)
    return differ


def speed_up_graph_recording() -> str:
    """Install the cheaper look-ups on CUDA graph trees' nodes; says what was done. Idempotent."""
    if os.environ.get("PIPELINE_STOCK_GRAPH_RECORDING") == "1":
        return "stock graph recording kept (PIPELINE_STOCK_GRAPH_RECORDING=1)"
    from torch._inductor import cudagraph_trees

    node = cudagraph_trees.CUDAGraphNode
    if getattr(node, "_pipeline_lookups", False):
        return "graph recording look-ups already installed"
    differ = stock_methods_differ(node)
    if differ:
        return f"stock graph recording kept: this torch changed {', '.join(differ)}"
    node._is_cuda_graph_recorded_tensor = _is_cuda_graph_recorded_tensor
    node._is_alias_of_live_recorded_tensor = _is_alias_of_live_recorded_tensor
    for_none = cudagraph_trees.pytree.tree_map(cudagraph_trees.is_live, [None])[0]
    node._get_liveness = staticmethod(_liveness(cudagraph_trees.is_live, for_none))
    node._pipeline_lookups = True
    return "graph recording look-ups installed"
