"""The collector paused while a training process sets up, then resumed with set-up's objects frozen."""

import gc

from pipeline.training import process_start


def test_the_collector_is_paused_for_set_up_then_resumes_with_what_set_up_made_frozen():
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        process_start.pause_collector()
        assert not gc.isenabled()
        made_in_set_up = [[i] for i in range(1000)]  # noqa: F841  objects that live as long as the process
        process_start.resume_collector()
        assert gc.isenabled() and gc.get_freeze_count() >= 1000 + frozen
        process_start.resume_collector()  # a second resume changes nothing
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_run_inside_another_process_leaves_its_collector_alone():
    frozen = gc.get_freeze_count()
    gc.disable()  # that process's own choice
    try:
        process_start.resume_collector()  # never paused here
        assert not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()
