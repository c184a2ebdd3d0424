"""SizeBatcher: batches never mix sizes, every item comes out once, and few sizes fill whole batches while many
sizes cannot pile up items."""
import random

from latentae.data.batching import SizeBatcher


def run(sizes, batch_size, max_pending=None):
    batcher = SizeBatcher(batch_size, max_pending)
    batches = []
    for i, size in enumerate(sizes):
        batches += batcher.add((i, size), size)
        assert batcher.pending <= batcher.max_pending
    return batches + batcher.flush()


def test_batches_hold_one_size_and_every_item_once():
    rng = random.Random(0)
    sizes = [rng.choice([(512, 768), (768, 512), (480, 320), (321, 481)]) for _ in range(200)]
    for batch_size, max_pending in ((1, None), (4, None), (16, None), (4, 5)):
        batches = run(sizes, batch_size, max_pending)
        assert sorted(i for b in batches for i, _ in b) == list(range(200))
        for b in batches:
            assert 1 <= len(b) <= batch_size and len({size for _, size in b}) == 1
            assert [i for i, _ in b] == sorted(i for i, _ in b)  # stored order within a size


def test_two_orientations_fill_whole_batches():
    sizes = [(768, 512) if i % 3 else (512, 768) for i in range(48)]  # 32 + 16: both multiples of 8
    assert [len(b) for b in run(sizes, 8)] == [8] * 6


def test_many_sizes_flush_the_oldest_bucket_early():
    batches = run([(100 + i, 100) for i in range(10)], 4, max_pending=6)  # all different: never a full batch
    assert [b[0][0] for b in batches] == list(range(10)) and all(len(b) == 1 for b in batches)
