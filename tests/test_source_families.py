"""Sources beyond plain BERT: RoBERTa-family folders read as the BERT they are, and the settings (LayerNorm
epsilon, token types, padding id) a SuperPLM takes from any source."""

from __future__ import annotations

import json

import pytest
import torch

from atb.model.bert_source import build_model, read_config, source_dims
from atb.space import Arch
from bert_sources import (from_model_space, importance_of, ordered_supernet, padded_batch, save_random_bert,
                          save_random_roberta)
from launching import run_tool

LINES = ["the quick brown fox jumps over the lazy dog", "a journey of a thousand miles begins with a single step",
         "all happy families are alike each unhappy family is unhappy in its own way"]


@pytest.mark.parametrize("mlm_head", [False, True])
def test_a_roberta_folder_is_read_as_the_bert_it_is(tmp_path, mlm_head):
    """RoBERTa's names, one token type and positions counted from padding id + 1, read as BERT: the same
    function on a right-padded batch (the encoder, and the MLM logits when the folder has its head)."""
    from transformers import RobertaForMaskedLM, RobertaModel

    folder = save_random_roberta(tmp_path / "roberta", mlm_head=mlm_head)
    config = read_config(folder)
    assert (config["model_type"], config["max_position_embeddings"]) == ("bert", 64)
    batch = padded_batch(pad_id=1, pairs=False)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        if mlm_head:
            expected = RobertaForMaskedLM.from_pretrained(folder).eval()(**batch).logits
            got = build_model(folder, config, with_mlm_head=True)(**batch).logits
        else:
            expected = RobertaModel.from_pretrained(folder).eval()(**batch).last_hidden_state
            got = build_model(folder, config)(**batch).last_hidden_state
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_a_roberta_config_without_a_padding_id_pads_with_one(tmp_path):
    from atb.model.bert_source import embedding_settings

    folder = save_random_roberta(tmp_path / "roberta")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pad_token_id": None}))
    read = read_config(folder)
    assert (read["max_position_embeddings"], embedding_settings(read)["pad_token_id"]) == (64, 1)


def test_a_fine_tuned_roberta_classifier_compresses_as_its_encoder(tmp_path):
    """RoBERTa's classification head reads <s> through a dense layer of its own, which the permutation does
    not know: it is left out, and the ordered supernet's largest sub-network is the classifier's encoder."""
    from transformers import RobertaForSequenceClassification, RobertaModel

    source = save_random_roberta(tmp_path / "roberta")
    folder = tmp_path / "classifier"
    RobertaForSequenceClassification.from_pretrained(source, num_labels=3).save_pretrained(str(folder))
    importance, dims = importance_of(folder)
    supernet, order = ordered_supernet(folder, importance, dims, tmp_path)
    batch = padded_batch(pad_id=1, pairs=False)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        hidden, _ = supernet.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        expected = RobertaModel.from_pretrained(source).eval()(**batch).last_hidden_state[..., order.hidden]
    torch.testing.assert_close(hidden[real], expected[real], atol=1e-5, rtol=1e-5)


def test_largest_subnet_of_a_supernet_ordered_from_roberta_is_the_roberta(tmp_path):
    from transformers import RobertaModel

    folder = save_random_roberta(tmp_path / "roberta")
    importance, dims = importance_of(folder)
    supernet, order = ordered_supernet(folder, importance, dims, tmp_path)
    assert read_config(tmp_path / "ordered")["model_type"] == "bert"  # the ordered copy is a plain BERT folder
    batch = padded_batch(pad_id=1, pairs=False)
    with torch.no_grad():
        hidden, _ = supernet.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        expected = RobertaModel.from_pretrained(folder).eval()(**batch).last_hidden_state[..., order.hidden]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=1e-5, rtol=1e-5)


def test_the_supernet_keeps_the_sources_layer_norm_epsilon_token_types_and_padding_row(tmp_path):
    """A source whose LayerNorms use another epsilon (RoBERTa-style 1e-5, here 0.1 so that it shows), one token
    type and another padding id: the SuperPLM built for it computes its function and exports its settings."""
    from atb.model.extract import extract
    from atb.train.config import PretrainConfig
    from atb.train.pretrain import build_supernet

    folder = save_random_bert(tmp_path / "bert", layer_norm_eps=0.1, type_vocab_size=1, pad_token_id=3)
    dims = source_dims(read_config(folder))
    cfg = PretrainConfig(init_from=str(folder), max_positions=dims.max_positions, dropout=0.0)
    supernet = build_supernet(cfg, dims.vocab_size, from_model_space(dims)).eval()
    batch = padded_batch()
    batch["token_type_ids"].zero_()
    with torch.no_grad():
        hidden, _ = supernet.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        expected = build_model(folder, read_config(folder))(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=1e-5, rtol=1e-5)
    exported = read_config(extract(supernet, Arch.parse("L1_H24_A4_Q16_F32"), tmp_path / "small"))
    assert (exported["layer_norm_eps"], exported["type_vocab_size"], exported["pad_token_id"]) == (0.1, 1, 3)



def bpe_tokenizer(lines: list[str]):
    """RoBERTa's kind of tokenizer (byte-level BPE; <s>, <pad> = 1, </s>, <unk>, <mask>), trained on `lines`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def test_a_roberta_tokenizer_saved_as_vocab_json_and_merges_loads_as_the_same_fast_tokenizer(tmp_path):
    """Older RoBERTa folders ship the slow tokenizer's files only; they are a complete vocabulary."""
    from atb.data import load_tokenizer

    tokenizer = bpe_tokenizer(LINES * 10)
    tokenizer.save_pretrained(str(tmp_path / "fast"))
    slow = tmp_path / "slow"
    slow.mkdir()
    model = json.loads((tmp_path / "fast" / "tokenizer.json").read_text())["model"]
    (slow / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (slow / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (slow / "tokenizer_config.json").write_text((tmp_path / "fast" / "tokenizer_config.json").read_text())
    loaded = load_tokenizer(str(slow))
    assert loaded.is_fast and loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded(LINES)["input_ids"] == tokenizer(LINES)["input_ids"]


@pytest.mark.slow
def test_a_roberta_with_its_own_tokenizer_compresses_develops_and_fine_tunes(tmp_path):
    """The README's chain on a RoBERTa folder with a byte-level BPE tokenizer (<s>, </s>, <pad> = 1): every
    export is a BERT carrying RoBERTa's settings, its largest the source, and it fine-tunes."""
    from transformers import RobertaModel

    from atb.model.extract import extract
    from atb.model.supernet_io import load_supernet

    lines = [f"{line} {i}" for i in range(60) for line in LINES]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    tokenizer = bpe_tokenizer(lines)
    folder = save_random_roberta(tmp_path / "roberta", mlm_head=True, vocab=len(tokenizer))
    tokenizer.save_pretrained(str(folder))
    common = ["--seq_len", 16, "--micro_batch", 4, "--report_to", "none", "--ds_config", "zero2_fp32",
              "--warmup_steps", 1, "--calib_samples", 16]
    run_tool("pretrain", ["--init_from", folder, "--corpus", tmp_path / "corpus.txt", "--out_dir", tmp_path / "pre",
                          "--steps", 2, "--lr", 1e-12, *common], nproc=2)
    supernet, _ = load_supernet(tmp_path / "pre" / "supernet")
    largest = extract(supernet, supernet.space.largest(), tmp_path / "largest", tokenizer=folder)
    batch = tokenizer(LINES, padding=True, return_tensors="pt")
    with torch.no_grad():
        got = build_model(largest, read_config(largest))(**batch).last_hidden_state
        expected = RobertaModel.from_pretrained(folder).eval()(**batch).last_hidden_state
    order = json.loads((tmp_path / "pre" / "importance.json").read_text())["order"]["hidden"]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[..., order][real], atol=1e-4, rtol=1e-4)

    run_tool("develop", ["--supernet", tmp_path / "pre" / "supernet", "--archs", "L1_H24_A4_Q16_F32",
                         "--out_dir", tmp_path / "dev", "--steps", 2, "--measure_latency", "false", *common], nproc=2)
    student = tmp_path / "dev" / "models" / "L1_H24_A4_Q16_F32"
    config = read_config(student)
    assert (config["type_vocab_size"], config["pad_token_id"], config["layer_norm_eps"]) == (1, 1, 1e-5)
    run_tool("finetune", ["--model", student, "--task", "movie_sentiment", "--max_train_samples", 32,
                          "--max_eval_samples", 32, "--epochs", 1, "--max_seq_len", 32, "--out_dir", tmp_path / "ft"])
    assert json.loads((tmp_path / "ft" / "model" / "config.json").read_text())["pad_token_id"] == 1
