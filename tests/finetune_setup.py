"""What the fine-tuning tests share (a pytest plugin, see conftest.py): a hand-written WordPiece tokenizer, two
tiny exports and a fast recipe."""

from __future__ import annotations

import string
import unicodedata
from pathlib import Path

import pytest
from conftest import make_supernet
from synthetic_tasks import BAD, COUNTRIES, FILLER, GOOD, NAMES

from atb.finetune import FinetuneConfig

VOCAB = 256  # the hand-written WordPiece vocabulary below fits in it


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A WordPiece vocabulary written by hand (the `tokenizers` trainer breaks ties differently from one
    process to the next, which would make the tiny fine-tuning runs irreproducible)."""
    from transformers import BertTokenizerFast

    words = GOOD + BAD + FILLER + NAMES + COUNTRIES + ["what", "is", "capital", "of", "we", "flew", "to", "same",
                                                       "different"]
    plain = sorted({unicodedata.normalize("NFD", w.lower()).encode("ascii", "ignore").decode() for w in words})
    letters = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(letters + string.punctuation),
             *("##" + c for c in letters), *plain]
    assert len(vocab) <= VOCAB
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.tokenize("Zürich, 'the' film") == ["zurich", ",", "'", "the", "'", "film"]
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def exports(tokenizer_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """A vanilla BERT export and a TinyBert one (qkv != hidden) of one tiny supernet."""
    from atb.model.extract import extract
    from atb.space import Arch

    supernet = make_supernet("tiny", vocab=VOCAB, positions=128)
    root = tmp_path_factory.mktemp("exports")
    return {
        "bert": extract(supernet, Arch(2, 32, 4, 32, 64), root / "bert", tokenizer=tokenizer_dir),
        "tinybert": extract(supernet, Arch(2, 48, 2, 16, 96), root / "tinybert", tokenizer=tokenizer_dir),
    }


def fast_cfg(model, task, out_dir, **overrides) -> FinetuneConfig:
    values = {"model": str(model), "task": str(task), "out_dir": str(out_dir), "max_seq_len": 32, "epochs": 4,
              "lr": 3e-3, "batch_size": 8, "warmup_ratio": 0.0, "logging_steps": 1000, "seed": 0}
    values.update(overrides)
    return FinetuneConfig(**values)
