"""CUDA graph trees' recording look-ups replaced by cheaper ones that give the same answers (on CPU storages: the
look-ups only compare data pointers and weak references, which work the same for any device)."""

import random
import types

import pytest
import torch
from torch._inductor import cudagraph_trees
from torch._inductor.cudagraph_trees import CUDAGraphNode, StorageWeakRefWrapper

from pipeline.training import graph_recording

STOCK = {name: CUDAGraphNode.__dict__[name] for name in ("_is_cuda_graph_recorded_tensor",
                                                          "_is_alias_of_live_recorded_tensor", "_get_liveness")}


@pytest.fixture
def restored_node_class(monkeypatch):
    """Whatever a test installs on CUDAGraphNode is undone after it."""
    for name, method in STOCK.items():
        monkeypatch.setattr(CUDAGraphNode, name, method)
    monkeypatch.delattr(CUDAGraphNode, "_pipeline_lookups", raising=False)
    monkeypatch.delenv("PIPELINE_STOCK_GRAPH_RECORDING", raising=False)
    return CUDAGraphNode


def a_recorded_path(seed: int):
    """Outputs of a few recorded graphs: live ones, dead ones (their memory free for reuse) and Nones, plus tensors
    to look up: outputs, views of them and fresh tensors (some at a dead output's address)."""
    rng = random.Random(seed)
    keep, path_weakrefs = [], []
    for _ in range(rng.randint(1, 6)):
        outputs = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.15:
                outputs.append(None)
                continue
            tensor = torch.empty(rng.choice([4, 64, 1024]))
            outputs.append(StorageWeakRefWrapper(tensor))
            if rng.random() < 0.6:
                keep.append(tensor)  # alive; the others die here and their memory can be handed out again
        path_weakrefs.append(outputs)
    queries = [t for t in keep] + [t[1:] for t in keep if t.numel() > 1] + [torch.empty(n) for n in (4, 64, 1024) * 4]
    return types.SimpleNamespace(path_weakrefs=path_weakrefs), queries, keep


@pytest.mark.parametrize("seed", range(20))
def test_the_look_ups_answer_as_torch_does(seed):
    node, queries, _alive = a_recorded_path(seed)
    stock_get_liveness = STOCK["_get_liveness"].__func__
    for tensor in queries:
        assert (graph_recording._is_cuda_graph_recorded_tensor(node, tensor)
                == STOCK["_is_cuda_graph_recorded_tensor"](node, tensor))
        assert (graph_recording._is_alias_of_live_recorded_tensor(node, tensor)
                == STOCK["_is_alias_of_live_recorded_tensor"](node, tensor))
    for_none = cudagraph_trees.pytree.tree_map(cudagraph_trees.is_live, [None])[0]
    liveness = graph_recording._liveness(cudagraph_trees.is_live, for_none)
    assert liveness(node.path_weakrefs) == stock_get_liveness(node.path_weakrefs)
    assert liveness([]) == stock_get_liveness([]) == []


def test_a_live_alias_is_found_where_torch_finds_it_and_a_dead_one_is_not():
    first, second = torch.empty(8), torch.empty(8)
    dead = torch.empty(8)
    node = types.SimpleNamespace(path_weakrefs=[[None, StorageWeakRefWrapper(first)],
                                                [StorageWeakRefWrapper(dead), StorageWeakRefWrapper(second)]])
    del dead
    assert graph_recording._is_alias_of_live_recorded_tensor(node, second[2:]) == (1, 1)
    assert graph_recording._is_alias_of_live_recorded_tensor(node, first) == (0, 1)
    assert graph_recording._is_alias_of_live_recorded_tensor(node, torch.empty(3)) is None


def test_installed_over_the_stock_methods_once(restored_node_class):
    assert graph_recording.speed_up_graph_recording() == "graph recording look-ups installed"
    assert restored_node_class._is_alias_of_live_recorded_tensor is graph_recording._is_alias_of_live_recorded_tensor
    assert graph_recording.speed_up_graph_recording() == "graph recording look-ups already installed"


def test_a_torch_that_changed_a_method_keeps_its_own(restored_node_class, monkeypatch):
    def _is_alias_of_live_recorded_tensor(self, t):
        return None  # some other logic

    monkeypatch.setattr(restored_node_class, "_is_alias_of_live_recorded_tensor", _is_alias_of_live_recorded_tensor)
    assert graph_recording.stock_methods_differ(restored_node_class) == ["_is_alias_of_live_recorded_tensor"]
    said = graph_recording.speed_up_graph_recording()
    assert said == "stock graph recording kept: this torch changed _is_alias_of_live_recorded_tensor"
    assert restored_node_class._is_cuda_graph_recorded_tensor is STOCK["_is_cuda_graph_recorded_tensor"]


def test_the_environment_can_keep_torchs_own(restored_node_class, monkeypatch):
    monkeypatch.setenv("PIPELINE_STOCK_GRAPH_RECORDING", "1")
    assert graph_recording.speed_up_graph_recording().startswith("stock graph recording kept")
    assert restored_node_class.__dict__["_get_liveness"] is STOCK["_get_liveness"]
