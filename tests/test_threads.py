"""The thread count follows the CPUs other processes leave free, in the processes latentae's entry points start."""
import pytest
import torch

from latentae import threads


@pytest.fixture
def free_machine(monkeypatch):
    """Four usable CPUs whose busy share each test sets; no thread count fixed by the environment."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: [0, 1, 2, 3])

    def busy(n: float):
        monkeypatch.setattr(threads, "busy_cpus", lambda cpus, window=threads.WINDOW_S: n)
    return busy


@pytest.mark.parametrize("busy, expected", [(0.0, 4), (0.3, 4), (1.0, 3), (2.0, 2), (3.6, 1), (4.0, 1)])
def test_threads_are_the_free_cpus(free_machine, busy, expected):
    free_machine(busy)
    assert threads.choose(4)[0] == expected
    assert threads.choose(2)[0] == min(2, expected)  # never more than torch's count


def test_a_launch_splits_the_free_cpus(free_machine, monkeypatch):
    free_machine(0.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.choose(4)[0] == 2


def test_the_environment_fixes_the_count(free_machine, monkeypatch):
    free_machine(4.0)
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.choose(4) == (3, "LATENTAE_THREADS=3")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a distributed launch's: torch already follows it
    assert threads.choose(4)[0] == 4


def test_only_entry_points_follow_the_load(free_machine, monkeypatch, capsys):
    free_machine(3.0)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_follow", [])
    monkeypatch.setattr(threads, "_chosen", [])
    try:
        assert threads.settle() == before  # a program that imports latentae keeps its count
        threads.follow_free_cpus()
        assert threads.settle() == 1 == torch.get_num_threads()
        assert "threads: 1 of" in capsys.readouterr().err or before == 1
        torch.set_num_threads(before)
        assert threads.settle() == before  # chosen once per process
    finally:
        torch.set_num_threads(before)


def test_busy_cpus_reads_this_machine():
    n = len(threads.usable_cpus())
    assert 0.0 <= threads.busy_cpus(threads.usable_cpus(), window=0.05) <= n + 0.01
