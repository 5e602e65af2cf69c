"""Tokenise a corpus and pack it into fixed-length MLM blocks: [CLS] + seq_len-2 tokens + [SEP].

Paragraphs are concatenated, separated by [SEP], so no compute is spent on padding. Two passes:

1. tokenise each paragraph (`datasets.map`, batched, `num_proc` workers) — the expensive part, cached
   under `cache_dir` keyed by (corpus, tokenizer) so a new seq_len or dev split reuses it;
2. pack the token stream into blocks, one process, vectorised over Arrow buffers. Packing goes over
   fixed groups of PACK_ROWS paragraphs (the short tail of each group is dropped), so the blocks do not
   depend on `num_proc` or on how `map` shards its work.

The blocks, split into train and a held-out dev set, are saved under `cache_dir` keyed by everything
they depend on; re-runs, resumes and the other ranks load them instead of tokenising again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk
from transformers import PreTrainedTokenizerBase

from atb.fsutil import atomic_dir

TOKENIZE_BATCH = 1000
PACK_ROWS = 10_000
FORMAT_VERSION = 1  # bump when the packing changes, so old caches are not reused
MIN_SEQ_LEN = 8


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the whole tokenizer pipeline (normaliser, vocab, specials), not only the vocab size.

    Truncation and padding are left out: transformers sets them on the backend at each call, so they
    reflect the last call, not the tokenizer.
    """
    pipeline = json.loads(tokenizer.backend_tokenizer.to_str())
    pipeline.pop("truncation", None)
    pipeline.pop("padding", None)
    return hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode()).hexdigest()[:16]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([FORMAT_VERSION, *parts]).encode()).hexdigest()[:20]


def tokens_key(corpus: Dataset, tokenizer: PreTrainedTokenizerBase) -> str:
    return _key("tokens", corpus._fingerprint, len(corpus), tokenizer_digest(tokenizer))


def blocks_key(corpus: Dataset, tokenizer: PreTrainedTokenizerBase, seq_len: int, dev_fraction: float,
               seed: int) -> str:
    return _key("blocks", tokens_key(corpus, tokenizer), seq_len, dev_fraction, seed)


def _tokenize(batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
    # split_special_tokens: a literal "[SEP]" or "[MASK]" in the text is text, not a control token
    encoded = tokenizer(batch["text"], add_special_tokens=False, split_special_tokens=True, verbose=False)
    return {"ids": encoded["input_ids"]}


def _pack(batch: pa.Table, cls_id: int, sep_id: int, seq_len: int) -> dict[str, np.ndarray]:
    ids = batch.column("ids").combine_chunks()
    lengths = ids.value_lengths().to_numpy(zero_copy_only=False)
    tokens = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
    doc_ends = np.cumsum(lengths)[lengths > 0]  # paragraphs with no tokens add no separator
    stream = np.insert(tokens, doc_ends, sep_id)
    body = seq_len - 2
    rows = len(stream) // body
    middle = stream[:rows * body].reshape(rows, body)
    cls_column, sep_column = (np.full((rows, 1), token, dtype=np.int32) for token in (cls_id, sep_id))
    return {"input_ids": np.concatenate([cls_column, middle, sep_column], axis=1)}


def tokenize_corpus(corpus: Dataset, tokenizer: PreTrainedTokenizerBase, num_proc: int = 1,
                    cache_dir: str | None = None) -> Dataset:
    """Token ids of each paragraph (column "ids"), cached in `cache_dir` (else in the corpus's own
    `datasets` cache, if it has one)."""
    key = tokens_key(corpus, tokenizer)
    cache_file = str(Path(cache_dir) / f"tokens-{key}.arrow") if cache_dir else None
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    # new_fingerprint: our key, so the cache never depends on how `datasets` hashes a tokenizer object
    return corpus.map(_tokenize, batched=True, batch_size=TOKENIZE_BATCH, remove_columns=corpus.column_names,
                      num_proc=num_proc if num_proc > 1 else None, fn_kwargs={"tokenizer": tokenizer},
                      cache_file_name=cache_file, new_fingerprint=key, desc="tokenise")


def pack_blocks(tokens: Dataset, tokenizer: PreTrainedTokenizerBase, seq_len: int,
                cache_file: str | None = None) -> Dataset:
    features = Features({"input_ids": List(Value("int32"), length=seq_len)})
    packed = tokens.with_format("arrow").map(
        _pack, batched=True, batch_size=PACK_ROWS, remove_columns=tokens.column_names, features=features,
        fn_kwargs={"cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id, "seq_len": seq_len},
        cache_file_name=cache_file, new_fingerprint=_key("packed", tokens._fingerprint, seq_len), desc="pack blocks")
    return packed.with_format(None)


def split_dev(blocks: Dataset, dev_fraction: float, seed: int) -> DatasetDict:
    """A seeded random set of blocks held out as dev (at least one); both splits keep corpus order."""
    n_dev = max(1, round(len(blocks) * dev_fraction))
    if n_dev >= len(blocks):
        raise ValueError(f"the corpus yields only {len(blocks)} block(s): too few to hold out {n_dev} for dev "
                         "and train on the rest; use a bigger corpus or a smaller seq_len")
    order = np.random.default_rng(seed).permutation(len(blocks))
    return DatasetDict(train=blocks.select(np.sort(order[n_dev:])), dev=blocks.select(np.sort(order[:n_dev])))


def build_blocks(corpus: Dataset, tokenizer: PreTrainedTokenizerBase, seq_len: int, dev_fraction: float = 0.01,
                 seed: int = 0, num_proc: int = 1, cache_dir: str | None = None) -> DatasetDict:
    """Train and dev splits of `seq_len`-token blocks (column "input_ids", torch format).

    With `cache_dir`, the result is saved there and later calls with the same inputs load it (no
    tokenisation); concurrent callers are safe (the folder appears in one rename).
    """
    if seq_len < MIN_SEQ_LEN:
        raise ValueError(f"seq_len {seq_len} is too short for MLM blocks (need >= {MIN_SEQ_LEN})")
    if not 0 <= dev_fraction <= 0.5:
        raise ValueError(f"dev_fraction must be in [0, 0.5], got {dev_fraction}")
    key = blocks_key(corpus, tokenizer, seq_len, dev_fraction, seed)
    target = Path(cache_dir) / f"blocks-{key}" if cache_dir else None
    if target is not None and target.is_dir():
        return load_from_disk(str(target)).with_format("torch")

    tokens = tokenize_corpus(corpus, tokenizer, num_proc, cache_dir)
    packed_file = target.with_name(f"packed-{target.name}.arrow") if target is not None else None
    blocks = split_dev(pack_blocks(tokens, tokenizer, seq_len, str(packed_file) if packed_file else None),
                       dev_fraction, seed)
    if target is not None:
        if not target.is_dir():  # another process may have finished first: its result is the same
            with atomic_dir(target, first_wins=True) as tmp:
                blocks.save_to_disk(str(tmp))
        packed_file.unlink(missing_ok=True)  # an intermediate: the saved splits hold the same blocks
        blocks = load_from_disk(str(target))
    return blocks.with_format("torch")
