"""Search scores candidates on the data the SuperPLM was trained on (its recorded corpus, dev split, seed,
seq_len and tokenizer) without any data flag; a flag overrides and says so; a vanished corpus is an error."""

from __future__ import annotations

import json
import random

import pytest
from conftest import make_supernet

from atb.space import Arch

WORDS = "the quick brown fox jumps over a lazy dog while it is raining in the old town".split()


def build_superplm(root):
    """A SuperPLM folder whose record names corpus C (dev_fraction 0.05, seed 3, seq_len 16)."""
    from atb.data import load_corpus, load_tokenizer, train_wordpiece
    from atb.model.supernet_io import save_supernet

    rng = random.Random(0)
    corpus = root / "C.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(300)) + "\n")
    train_wordpiece(load_corpus(str(corpus)), 80, root / "tokenizer")
    vocab = len(load_tokenizer(str(root / "tokenizer")))
    meta = {"tokenizer": str(root / "tokenizer"), "seq_len": 16, "corpus": str(corpus), "dev_fraction": 0.05,
            "data_seed": 3, "step": 4}
    save_supernet(make_supernet("tiny", vocab=vocab, positions=32), root / "supernet", meta=meta)
    return root


@pytest.fixture(scope="module")
def superplm(tmp_path_factory):
    return build_superplm(tmp_path_factory.mktemp("plm"))


def search_cfg(superplm, out, **flags):
    from atb.search.config import SearchConfig

    return SearchConfig(checkpoint=str(superplm / "supernet"), out_dir=str(out), targets=["3x"], preset="tiny",
                        generations=1, population=3, batch_size=8, dev_batches=2, progress=False, plot=False, **flags)


def test_search_without_data_flags_scores_on_the_superplms_own_dev_split(superplm, tmp_path):
    from atb.data import build_blocks, dev_batches, load_corpus, load_tokenizer
    from atb.search.fitness import DevLossFitness
    from atb.model.supernet_io import load_supernet
    from atb.search import run_search

    results = run_search(search_cfg(superplm, tmp_path / "s"))
    model, _ = load_supernet(superplm / "supernet")
    tokenizer = load_tokenizer(str(superplm / "tokenizer"))
    blocks = build_blocks(load_corpus(str(superplm / "C.txt")), tokenizer, 16, dev_fraction=0.05, seed=3)
    fitness = DevLossFitness(model, dev_batches(blocks["dev"], tokenizer, 8, 3)[:2])
    largest = results["sanity"]["largest"]
    assert fitness(Arch.from_dict(largest["arch"])) == pytest.approx(largest["score"], rel=1e-6)
    assert results["config"]["corpus"] == [str(superplm / "C.txt")] and results["config"]["data_seed"] == 3


def test_an_explicit_data_flag_wins_and_says_so(superplm, tmp_path, capsys):
    from atb.search import run_search

    results = run_search(search_cfg(superplm, tmp_path / "s", data_seed=5))
    assert results["config"]["data_seed"] == 5 and results["config"]["dev_fraction"] == 0.05
    assert "--data_seed 5 overrides the SuperPLM's recorded data_seed 3" in capsys.readouterr().err


def test_a_recorded_corpus_that_is_gone_names_the_path_and_the_flag(superplm, tmp_path):
    import shutil

    from atb.search import run_search

    moved = tmp_path / "plm"
    shutil.copytree(superplm / "supernet", moved)
    info = json.loads((moved / "supernet.json").read_text())
    info["meta"]["corpus"] = str(tmp_path / "gone.txt")
    (moved / "supernet.json").write_text(json.dumps(info))
    cfg = search_cfg(superplm, tmp_path / "s")
    cfg.checkpoint = str(moved)
    with pytest.raises(FileNotFoundError, match=r"gone\.txt.*no longer exists.*--corpus"):
        run_search(cfg)
    assert not (tmp_path / "s" / "results.json").exists()
