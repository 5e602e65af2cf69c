"""A SuperBert initialised from a BERT checkpoint reproduces that BERT at the matching sub-arch."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from atb.model.elastic import SuperBert, SuperBertConfig
from atb.model.pretrained_init import init_from_pretrained
from atb.space import Arch, SearchSpace


def test_matching_sub_arch_reproduces_the_source_bert(tmp_path):
    torch.manual_seed(0)
    # source: 2 layers, hidden 16, 4 heads of size 4 (the supernet's heads are size 8), ffn 32
    src = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=32, max_position_embeddings=32), add_pooling_layer=False).eval()
    src.save_pretrained(tmp_path / "bert")
    space = SearchSpace.load("tiny_kd").to_spec()
    space["hidden"]["min"] = 16
    model = SuperBert(SuperBertConfig(space=space, vocab_size=100, max_position_embeddings=32)).eval()
    report = init_from_pretrained(model, tmp_path / "bert")
    assert "bert.encoder.layer.1.attention.self.query.weight" in report["copied"]
    ids = torch.randint(1, 100, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        ours, _ = model.encode(ids, mask, None, Arch(2, 16, 4, 16, 32))
        ref = src(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours - ref)[mask.bool()].abs().max() < 1e-5


def test_init_from_a_folder_that_is_not_bert(tmp_path):
    model = SuperBert(SuperBertConfig(space=SearchSpace.load("tiny").to_spec(), vocab_size=100))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        init_from_pretrained(model, tmp_path)
