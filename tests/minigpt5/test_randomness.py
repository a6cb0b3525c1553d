"""Per-sample random draws: a sample's noise does not depend on the batch it is in."""

from __future__ import annotations

import pytest
import torch

from minigpt5.randomness import draw


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_per_sample_draws_do_not_depend_on_the_batch_split():
    whole = draw(torch.randn, (4, 3, 5), generators([10, 11, 12, 13]))
    halves = torch.cat([draw(torch.randn, (2, 3, 5), generators([10, 11])),
                        draw(torch.randn, (2, 3, 5), generators([12, 13]))])
    assert torch.equal(whole, halves)
    assert torch.equal(whole[1:2], torch.randn((1, 3, 5), generator=torch.Generator().manual_seed(11)))
    one = draw(torch.randn, (4, 3, 5), torch.Generator().manual_seed(10))  # one generator: the plain draw
    assert torch.equal(one, torch.randn((4, 3, 5), generator=torch.Generator().manual_seed(10)))


def test_generator_count_must_match_the_batch():
    with pytest.raises(ValueError, match="3 generators for a batch of 4"):
        draw(torch.rand, (4,), generators([1, 2, 3]))


def test_model_losses_of_a_split_batch_average_to_the_whole(tiny_model, caption_batch):
    tiny_model.train()
    batch = caption_batch(tiny_model, ["a red circle", "a blue square", "a green triangle", "a red square"],
                          generator=torch.Generator().manual_seed(0))
    seeds = [5, 6, 7, 8]
    whole = tiny_model(batch, generator=generators(seeds))
    parts = [tiny_model({k: v[i:i + 2] for k, v in batch.items()}, generator=generators(seeds[i:i + 2]))
             for i in (0, 2)]
    torch.testing.assert_close(whole.ldm, (parts[0].ldm + parts[1].ldm) / 2)
    torch.testing.assert_close(whole.cap, (parts[0].cap + parts[1].cap) / 2)
