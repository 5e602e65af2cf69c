"""Corpus → tokenizer → packed MLM blocks → deterministic, sharded, resumable batches."""

from atb.data.blocks import build_blocks
from atb.data.corpus import load_corpus
from atb.data.loader import SampleMasker, dev_batches, make_batches, steps_per_epoch
from atb.data.tokenizer import check_vocab_compatible, load_tokenizer, train_wordpiece

__all__ = ["SampleMasker", "build_blocks", "check_vocab_compatible", "dev_batches", "load_corpus",
           "load_tokenizer", "make_batches", "steps_per_epoch", "train_wordpiece"]
