"""MLM batches in a fixed global order, with masks that depend only on the sample.

The order is defined per optimizer step over the GLOBAL batch G = micro_batch x grad_accum x world_size:
epoch e is a permutation of the train blocks seeded by (seed, e); step s consumes permuted positions
[s*G, (s+1)*G) of its epoch (the incomplete last global batch of an epoch is dropped), and micro-step m
of rank r takes positions s*G + (m*world_size + r)*micro_batch + [0, micro_batch). Hence a run on 2 ranks
and one on 1 rank with twice the accumulation see the same samples per step, and resuming at step k
starts exactly there: the position is computed, nothing is replayed.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

Batch = dict[str, torch.Tensor]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of parts: nearby tuples give unrelated streams (unlike seed + i)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class SampleMasker:
    """BERT masking (15% of tokens; of those 80% [MASK], 10% random, 10% kept) with one seed per sample.

    The masking is transformers' DataCollatorForLanguageModeling. Its `seed` argument alone is not
    enough: the collator keeps ONE generator that advances with every sample it masks, so a sample's mask
    would depend on how many samples this process masked before it — on the world size, the
    accumulation and the resume step. Here the collator's generator is re-seeded for each sample from
    (seed, epoch, position), so a block at a given place in the global order gets the same mask on any
    rank layout, after any resume, whatever the global RNG state. [CLS]/[SEP]/[PAD] are never masked.
    Blocks all have the same length, so the collator's padding step is skipped (`torch_mask_tokens`).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mlm_probability: float = 0.15):
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=0)
        specials = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
        self.special_ids = torch.tensor(sorted(specials))

    def __call__(self, rows: torch.Tensor, seeds: list[int]) -> Batch:
        if len(rows) != len(seeds):
            raise ValueError(f"{len(rows)} rows but {len(seeds)} seeds")
        special = torch.isin(rows, self.special_ids)
        inputs, labels = [], []
        for row, row_special, seed in zip(rows, special, seeds):
            self.collator.generator = torch.Generator().manual_seed(seed)
            masked, target = self.collator.torch_mask_tokens(row[None].clone(), special_tokens_mask=row_special[None])
            inputs.append(masked[0])
            labels.append(target[0])
        input_ids = torch.stack(inputs)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "token_type_ids": torch.zeros_like(input_ids), "labels": torch.stack(labels)}


def steps_per_epoch(num_blocks: int, global_batch: int) -> int:
    """Optimizer steps in one pass over `num_blocks` train blocks (the incomplete last step is dropped)."""
    steps = num_blocks // global_batch
    if steps == 0:
        raise ValueError(f"the corpus has {num_blocks} training blocks, fewer than one global batch "
                         f"({global_batch} = micro batch x accumulation x ranks): use a bigger corpus or smaller batch")
    return steps


def epoch_order(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(derive_seed(seed, "epoch", epoch)).permutation(num_blocks)


def _rows(blocks: Dataset, indices: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(blocks[indices.tolist()]["input_ids"], dtype=torch.long)


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch `i` of one rank, counted from step 0 (i = step * grad_accum + micro_step).

    Each item is a pure function of its index, so DataLoader workers can build them in parallel and a
    resume simply starts counting at start_step * grad_accum.
    """

    def __init__(self, blocks: Dataset, masker: SampleMasker, micro_batch: int, grad_accum: int, rank: int,
                 world_size: int, seed: int):
        self.blocks = blocks.with_format("numpy")
        self.masker = masker
        self.micro_batch, self.grad_accum, self.rank, self.world_size = micro_batch, grad_accum, rank, world_size
        self.seed = seed
        self.global_batch = micro_batch * grad_accum * world_size
        self.per_epoch = steps_per_epoch(len(blocks), self.global_batch)
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.blocks), self.seed, epoch))
        return self._order[1]

    def positions(self, index: int) -> tuple[int, range]:
        """(epoch, positions in that epoch's permutation) that micro-batch `index` consists of."""
        step, micro = divmod(index, self.grad_accum)
        epoch, within = divmod(step, self.per_epoch)
        first = within * self.global_batch + (micro * self.world_size + self.rank) * self.micro_batch
        return epoch, range(first, first + self.micro_batch)

    def __getitem__(self, index: int) -> Batch:
        epoch, positions = self.positions(index)
        rows = _rows(self.blocks, self.order(epoch)[positions.start:positions.stop])
        return self.masker(rows, [derive_seed(self.seed, epoch, p) for p in positions])


def make_batches(blocks: Dataset, tokenizer: PreTrainedTokenizerBase, micro_batch: int, grad_accum: int, rank: int,
                 world_size: int, seed: int, start_step: int = 0, mlm_probability: float = 0.15,
                 num_workers: int = 0) -> Iterator[Batch]:
    """This rank's micro-batches from optimizer step `start_step` on, `grad_accum` per step, endless
    (epochs roll over). Each batch: input_ids, attention_mask, token_type_ids, labels (-100 = not masked).

    Masking runs on the CPU; `num_workers` > 0 builds batches ahead in that many DataLoader worker
    processes (same batches, same order) so a GPU step does not wait for them.
    """
    if micro_batch < 1 or grad_accum < 1 or world_size < 1:
        raise ValueError(f"micro_batch, grad_accum and world_size must be >= 1 "
                         f"(got {micro_batch}, {grad_accum}, {world_size})")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    micro_batches = MicroBatches(blocks, SampleMasker(tokenizer, mlm_probability), micro_batch, grad_accum, rank,
                                 world_size, seed)
    indices = itertools.count(start_step * grad_accum)
    if num_workers <= 0:
        return map(micro_batches.__getitem__, indices)
    loader = torch.utils.data.DataLoader(micro_batches, batch_size=None, sampler=indices, num_workers=num_workers,
                                         prefetch_factor=4)
    return iter(loader)


def dev_batches(blocks: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int,
                max_batches: int = 0, mlm_probability: float = 0.15) -> list[Batch]:
    """The held-out blocks in order, with fixed masks: the same numbers on every call, rank and run, so
    dev losses are comparable across checkpoints and searches. `max_batches` > 0 caps the count."""
    count = len(blocks) if max_batches <= 0 else min(len(blocks), max_batches * batch_size)
    return masked_batches(blocks, tokenizer, list(range(count)), batch_size, seed, "dev", mlm_probability)


def masked_batches(blocks: Dataset, tokenizer: PreTrainedTokenizerBase, positions: list[int], batch_size: int,
                   seed: int, tag: str, mlm_probability: float = 0.15) -> list[Batch]:
    """Blocks at `positions`, batched in that order; each block's mask depends only on (seed, tag, position),
    so ranks that split the positions between them mask every block as one rank would."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    masker = SampleMasker(tokenizer, mlm_probability)
    blocks = blocks.with_format("numpy")
    batches = []
    for first in range(0, len(positions), batch_size):
        chunk = np.asarray(positions[first:first + batch_size])
        batches.append(masker(_rows(blocks, chunk), [derive_seed(seed, tag, int(p)) for p in chunk]))
    return batches
