"""The search's fitness functions on a tiny supernet: the MLM and KD dev losses against references computed by
hand, and the quick fine-tune child process. The search core is in test_search.py."""

from __future__ import annotations

import random

import pytest
import torch

from atb.space import Arch, SearchSpace

TINY = SearchSpace.load("tiny")


def masked_batches(n=3, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (4, 16), generator=g)
        labels = torch.full_like(ids, -100)
        pick = torch.rand(ids.shape, generator=g) < 0.2
        labels[pick] = ids[pick]
        ids = ids.masked_fill(pick, 3)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                    "labels": labels})
    return out


def test_dev_loss_is_the_token_weighted_mlm_loss_and_independent_of_order(tiny_supernet):
    from atb.search.fitness import DevLossFitness

    tiny_supernet.config.hidden_dropout_prob = 0.5  # eval mode must switch dropout off
    batches = masked_batches()
    fitness = DevLossFitness(tiny_supernet.train(), batches)
    arch = Arch(2, 32, 2, 16, 64)
    expected_sum, tokens = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = tiny_supernet(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch=arch,
                                   logits_for_all=True).logits
            expected_sum += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(),
                                                                    reduction="sum", ignore_index=-100))
            tokens += int((b["labels"] != -100).sum())
    first = fitness(arch)
    assert first == pytest.approx(expected_sum / tokens, rel=1e-5)
    fitness(TINY.largest())
    assert fitness(arch) == first  # bitwise: no state carried between candidates
    with pytest.raises(ValueError, match="outside space"):
        fitness(Arch(9, 32, 2, 16, 64))


def test_kd_fitness_runs_the_teacher_once_and_scores_attention_against_it():
    from conftest import make_supernet
    from transformers import BertConfig, BertModel

    from atb.search.fitness import DevLossFitness
    from atb.train.objectives import Teacher, attention_score_mse

    torch.manual_seed(0)
    teacher = Teacher(BertModel(BertConfig(vocab_size=100, hidden_size=24, num_hidden_layers=1, num_attention_heads=4,
                                           intermediate_size=48, max_position_embeddings=32)))
    calls = []
    teacher.model.register_forward_hook(lambda *_: calls.append(1))
    student = make_supernet("tiny_kd")
    batches = masked_batches(n=2)
    fitness = DevLossFitness(student, batches, objective="kd", teacher=teacher)
    arch = Arch(2, 32, 4, 16, 48)
    score = fitness(arch)
    fitness(SearchSpace.load("tiny_kd").largest())
    assert len(calls) == 2  # once per dev batch, not per candidate
    expected = 0.0
    with torch.no_grad():
        for b in batches:
            _, scores = student.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch, want_scores=True)
            expected += float(attention_score_mse(scores, teacher(b["input_ids"], b["attention_mask"],
                                                                  b["token_type_ids"]).scores, b["attention_mask"]))
    assert score == pytest.approx(expected / 2, rel=1e-5)
    # with the trained projection: the training objective's attention + hidden terms
    from atb.model.elastic import ElasticLinear
    from atb.train.objectives import kd_losses

    projection = ElasticLinear(48, 24)
    torch.nn.init.normal_(projection.weight, std=0.02)  # its owner initialises it (torch.empty otherwise)
    with_projection = DevLossFitness(student, batches, objective="kd", teacher=teacher, projection=projection)
    expected = 0.0
    with torch.no_grad():
        for b in batches:
            hidden, scores = student.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch,
                                            want_scores=True)
            t_out = teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            parts = kd_losses(scores, projection(hidden, 24, arch.hidden), t_out, b["attention_mask"])
            expected += float(parts["kd_attn"] + parts["kd_hidden"])
    assert with_projection(arch) == pytest.approx(expected / 2, rel=1e-5) and with_projection(arch) > score
    with pytest.raises(ValueError, match="teacher"):
        DevLossFitness(student, batches, objective="kd")


def test_quick_finetune_child_runs_outside_the_search_process_group(tmp_path, monkeypatch):
    from conftest import make_supernet

    from atb.search.finetune_fitness import QuickFinetuneFitness

    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1234"), ("TORCHELASTIC_RUN_ID", "x")):
        monkeypatch.setenv(name, value)
    from atb.model.supernet_io import save_supernet

    save_supernet(make_supernet("tiny"), tmp_path / "supernet")
    fitness = QuickFinetuneFitness(tmp_path / "supernet", tmp_path, "sms_spam", tmp_path, device_index=1)
    env = fitness._child_env()
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID"} & set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["PATH"] == __import__("os").environ["PATH"]
    assert fitness.higher_is_better and fitness.name == "finetune_sms_spam"


def write_tiny_task(root):
    """A trivially separable sentiment task and a 15-token WordPiece tokenizer for it."""
    from transformers import BertTokenizerFast

    rng = random.Random(0)
    task = root / "task"
    task.mkdir()
    for split, n in (("train", 64), ("dev", 32)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            word = rng.choice(["wonderful", "great"] if label else ["awful", "terrible"])
            rows.append(f"the film was {word} {rng.choice(['today', 'again', 'indeed'])}\t{label}")
        (task / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    words = "the film was wonderful great awful terrible today again indeed".split()
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(str(root / "vocab.txt")).save_pretrained(str(root / "tokenizer"))
    return task, root / "tokenizer", len(words) + 5


@pytest.mark.slow  # three fine-tunes in child processes: ~30 s each on a busy 2-core machine
def test_quick_finetune_uses_atb_finetune_learns_a_separable_task_and_is_reproducible(tmp_path, monkeypatch):
    from conftest import make_supernet

    from atb.search.finetune_fitness import QuickFinetuneFitness
    from atb.model.supernet_io import save_supernet

    task, tokenizer, vocab = write_tiny_task(tmp_path)
    save_supernet(make_supernet("tiny", vocab=vocab, positions=32), tmp_path / "supernet")
    monkeypatch.setenv("RANK", "1")  # as under a launcher: the child must not inherit it
    monkeypatch.setenv("WORLD_SIZE", "2")
    fitness = QuickFinetuneFitness(tmp_path / "supernet", tokenizer, str(task), tmp_path / "work",
                                   epochs=10, lr=3e-3, batch_size=16, max_seq_len=16, space=TINY)
    largest = TINY.largest()
    accuracy = fitness(largest)
    assert accuracy >= 0.9  # chance is ~0.5: the sub-network's weights really were fine-tuned
    assert fitness(largest) == accuracy  # seeded: order and rank do not matter
    assert list((tmp_path / "work").iterdir()) == []  # temporary exports are cleaned up
    with pytest.raises(RuntimeError, match="fine-tuning"):
        QuickFinetuneFitness(tmp_path / "supernet", tokenizer, str(tmp_path / "nope"), tmp_path / "work")(largest)
