"""The task suite: preprocessing, hub loaders on local copies, fail-fast offline, offline text tasks."""

import time

import numpy as np
import pytest
import torch

from metalr import hub, tasks, train
from metalr.tasks import ner, qa, text


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.delenv(hub.DATA_DIR_ENV, raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ preprocessing
def test_word_tokenizer_vocab_and_padding():
    assert text.word_tokenize("It's NOT bad,<br />really!") == ["it's", "not", "bad", ",", "really", "!"]
    v = text.Vocab.build([["a", "b", "a"], ["a", "c"]], min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "a"] and v.encode(["a", "zzz"]) == [2, text.UNK]
    ids = text.pad_ids([[2, 3, 4], []], max_len=2)
    assert ids.tolist() == [[2, 3], [text.UNK, 0]]
    batch = text.trim_collate([(torch.tensor([5, 0, 0, 0]), torch.tensor(1)), (torch.tensor([5, 6, 0, 0]), torch.tensor(0))])
    assert batch[0].shape == (2, 2) and batch[1].tolist() == [1, 0]


def test_read_conll_handles_whitespace_separators(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("Empire\tB-facility\nState\tI-facility\n\t\nhi\tO\n")
    assert ner.read_conll(f) == [(["Empire", "State"], ["B-facility", "I-facility"]), (["hi"], ["O"])]


# ------------------------------------------------------------------ hub loaders
@pytest.mark.parametrize("name", ["imdb_bilstm", "cifar10_resnet18", "conll2003_bilstm_crf", "squad_v2_bert"])
def test_hub_tasks_fail_fast_with_instructions_offline(name):
    t0 = time.perf_counter()
    with pytest.raises(hub.DataUnavailableError) as err:
        tasks.build(name)
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert hub.DATA_DIR_ENV in msg and "save_to_disk" in msg and "data_files" in msg


def _reviews(n, seed=0):
    rng = np.random.default_rng(seed)
    good, bad = ["great", "moving", "superb"], ["dull", "awful", "boring"]
    labels = [int(i % 2) for i in range(n)]
    texts = [" ".join(rng.choice(good if y else bad, 5)) + " film" for y in labels]
    return {"text": texts, "label": labels}


def test_imdb_from_save_to_disk_copy_trains(tmp_path, monkeypatch):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict(_reviews(64)), "test": datasets.Dataset.from_dict(_reviews(32, 1))}).save_to_disk(
        str(tmp_path / "imdb")
    )
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path))
    task = tasks.build("imdb_bilstm", steps=30, eval_every=30, batch_size=16)
    assert len(task.train_data) == 64 and len(task.val_data) == 32 and task.num_features == 6.0
    hist = train.run(task, "constant", seed=0)
    final = hist.final
    assert {"val_loss", "val_accuracy", "val_macro_f1", "val_ece"} <= set(final)
    assert final["val_accuracy"] == 1.0  # the words give the label away


def test_ag_news_from_parquet_files(tmp_path, monkeypatch):
    import datasets

    d = tmp_path / "ag_news"
    d.mkdir()
    data = {"text": [f"topic {i % 4} story" for i in range(40)], "label": [i % 4 for i in range(40)]}
    datasets.Dataset.from_dict(data).to_parquet(str(d / "train-00000.parquet"))
    datasets.Dataset.from_dict(data).select(range(8)).to_parquet(str(d / "test-00000.parquet"))
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path))
    task = tasks.build("ag_news_bilstm", steps=2)
    assert task.num_classes == 4 and len(task.train_data) == 40 and len(task.val_data) == 8


def test_vision_tasks_from_local_images(tmp_path, monkeypatch):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    gray = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(12)]
    labels = [i % 10 for i in range(12)]
    datasets.Dataset.from_dict(
        {"img": rgb, "label": labels}, features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    ).save_to_disk(str(tmp_path / "cifar10"))
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"image": gray, "label": labels}, features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
            )
        }
    ).save_to_disk(str(tmp_path / "fashion_mnist"))
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path))
    cifar = tasks.build("cifar10_resnet18")
    x, _ = cifar.train_data[0]
    assert x.shape == (3, 32, 32) and len(cifar.train_data) + len(cifar.val_data) == 12  # no test split: 10% carved off
    fm = tasks.build("fashion_mnist_resnet18", steps=2, eval_every=2, batch_size=4)
    assert fm.train_data[0][0].shape == (1, 32, 32)
    assert float(fm.train_data[0][0][0, 0, 0]) == pytest.approx(-0.286 / 0.353, abs=1e-3)  # black padding, standardised
    assert "val_macro_f1" in train.run(fm, "constant", seed=0).final


def test_conll2003_from_local_copy_with_classlabels(tmp_path, monkeypatch):
    import datasets

    feats = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": datasets.Sequence(datasets.ClassLabel(names=ner.CONLL2003_TAGS))}
    )
    sents = {"tokens": [["John", "lives", "in", "Paris"], ["EU", "rejects"]] * 6, "ner_tags": [[1, 0, 0, 5], [3, 0]] * 6}
    split = datasets.Dataset.from_dict(sents, features=feats)
    datasets.DatasetDict({"train": split, "validation": split.select(range(4))}).save_to_disk(str(tmp_path / "conll2003"))
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path))
    task = tasks.build("conll2003_bilstm_crf", steps=2, eval_every=2)
    assert task.tag_names == ner.CONLL2003_TAGS and task.family == "ner"
    final = train.run(task, "constant", seed=0).final
    assert {"val_accuracy", "val_entity_precision", "val_entity_recall", "val_entity_f1"} <= set(final)


def test_squad_preprocessing_maps_answers_back_to_text(tmp_path, monkeypatch):
    import datasets

    ctx = "The tower was built in 1889 in Paris by Gustave Eiffel."
    data = {
        "id": ["a", "b", "c"], "title": ["t"] * 3, "context": [ctx] * 3,
        "question": ["When was the tower built?", "Who built it?", "What colour is the moon?"],
        "answers": [{"text": ["1889"], "answer_start": [ctx.index("1889")]}, {"text": ["Gustave Eiffel"], "answer_start": [ctx.index("Gustave")]}, {"text": [], "answer_start": []}],
    }  # fmt: skip
    split = datasets.Dataset.from_dict(data)
    from metalr.models import hf

    ds, spans, contexts, golds = qa.encode_squad(hf.load_tokenizer("minilm"), split, max_len=48)
    ids, types, mask, start, end = ds.tensors
    texts = [contexts[i][spans[i][int(start[i])][0] : spans[i][int(end[i])][1]] if int(start[i]) else "" for i in range(3)]
    assert texts == ["1889", "Gustave Eiffel", ""] and golds[2] == []
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(tmp_path / "squad_v2"))
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path))
    task = tasks.build("squad_v2_bert", steps=1, eval_every=1, batch_size=3)
    final = train.run(task, "constant", seed=0).final
    assert {"val_exact_match", "val_f1", "val_accuracy", "val_loss"} <= set(final) and 0 <= final["val_f1"] <= 1


# ------------------------------------------------------------------ offline tasks
def test_rotten_tomatoes_data_is_real_binary_and_split_by_movie():
    tt, ty, vt, vy = text.load_rotten_tomatoes()
    assert len(tt) + len(vt) == 12808 and set(ty) == set(vy) == {0, 1}  # plot rows dropped
    assert sum(ty) + sum(vy) == 7403  # fresh
    task = tasks.build("rt_bilstm")
    assert task.data_kind == "real" and 15 < task.num_features < 30


def test_twitter_ner_task_builds_and_steps():
    task = tasks.build("twitter_ner_bilstm_crf", steps=3, eval_every=3)
    assert len(task.train_data) + len(task.val_data) == 2394
    assert len(task.tag_names) == 21 and task.tag_names[0] == "O"
    hist = train.run(task, "cosine", seed=0)
    assert len(hist.loss) == 3 and 0 <= hist.final["val_entity_f1"] <= 1 and hist.final["val_accuracy"] > 0.5


def test_synthetic_qa_is_labelled_right_and_trains():
    task = tasks.build("synthetic_qa", steps=3, eval_every=3)
    assert task.data_kind == "synthetic"
    ids, types, mask, start, end = task.val_data.tensors
    assert task.span_text is not None
    for i in range(50):
        gold = task.val_answers[i]
        assert (gold == []) == (int(start[i]) == 0)
        if gold:
            assert task.span_text(i, int(start[i]), int(end[i])) == gold[0]
    unanswerable = float((start == 0).float().mean())
    assert 0.25 < unanswerable < 0.42
    final = train.run(task, "constant", seed=0).final
    assert {"val_exact_match", "val_f1", "val_accuracy"} <= set(final)


def test_best_spans_prefers_null_when_it_scores_higher():
    s = torch.tensor([[5.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    e = torch.tensor([[5.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    allowed = torch.ones(2, 4, dtype=torch.bool)
    bs, be, has = qa.best_spans(s, e, allowed, max_answer_len=3)
    assert has.tolist() == [False, True] and (int(bs[1]), int(be[1])) == (2, 3)


def test_unknown_task_and_preset_are_refused():
    with pytest.raises(KeyError, match="rt_bilstm"):
        tasks.build("rt_bilstmm")
    with pytest.raises(ValueError, match="cpu"):
        tasks.build("rt_bilstm", preset="gpu")


def test_hub_probe_never_hangs_when_not_in_offline_mode(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: time.sleep(30))  # a black-holed network
    hub.hub_reachable.cache_clear()
    try:
        t0 = time.perf_counter()
        assert hub.hub_reachable(0.2) is False
        with pytest.raises(hub.DataUnavailableError, match="cannot be reached"):
            hub.load_hf_dataset("imdb")
        assert time.perf_counter() - t0 < 8
    finally:
        hub.hub_reachable.cache_clear()
