"""Model forward / backward shapes and the CRF against brute force."""

import itertools

import pytest
import torch

from metalr.models import CRF, BiLSTMAttention, BiLSTMCRF, BiLSTMQA, efficientnet_b0, resnet18, resnet50


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("make", [lambda: resnet18(10, 3, width=8), lambda: resnet50(10, 3, width=8), lambda: efficientnet_b0(10, 3, width_mult=0.25)])
def test_vision_models_forward_backward(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet_sizes_match_the_reference():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(resnet18()) - 11_173_962) < 1000  # kuangliu/pytorch-cifar ResNet18
    assert abs(count(resnet50()) - 23_520_842) < 1000
    assert resnet18(10, in_channels=1)(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_bilstm_attention_ignores_padding():
    torch.manual_seed(0)
    model = BiLSTMAttention(50, 3, embed_dim=8, hidden=8, dropout=0.0).eval()
    ids = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0, 0]])
    assert torch.allclose(model(ids), model(padded), atol=1e-6)
    model(torch.randint(1, 50, (4, 9))).sum().backward()


def test_crf_matches_brute_force():
    torch.manual_seed(0)
    crf = CRF(3)
    em = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    for b in range(2):
        n = int(mask[b].sum())
        paths = list(itertools.product(range(3), repeat=n))
        scores = torch.stack([crf.score(em[b : b + 1, :n], torch.tensor([p]), mask[b : b + 1, :n])[0] for p in paths])
        assert torch.allclose(crf.log_partition(em[b : b + 1], mask[b : b + 1]), torch.logsumexp(scores, 0), atol=1e-5)
        assert crf.decode(em[b : b + 1], mask[b : b + 1])[0] == list(paths[int(scores.argmax())])
    tags = torch.tensor([[0, 1, 2, 0], [2, 2, 0, 0]])
    nll = crf.nll(em, tags, mask)
    assert nll > 0
    nll.backward()
    with pytest.raises(ValueError, match="first position"):
        crf.nll(em, tags, torch.zeros(2, 4, dtype=torch.bool))


def test_bilstm_crf_and_qa_forward_backward():
    torch.manual_seed(0)
    tagger = BiLSTMCRF(30, 5, embed_dim=8, hidden=8, char_vocab_size=20, char_dim=4, char_filters=4)
    words, chars = torch.randint(1, 30, (2, 6)), torch.randint(0, 20, (2, 6, 5))
    mask = torch.ones(2, 6, dtype=torch.bool)
    em = tagger(words, chars, mask)
    assert em.shape == (2, 6, 5)
    tagger.crf.nll(em, torch.randint(0, 5, (2, 6)), mask).backward()
    qa = BiLSTMQA(40, embed_dim=8, hidden=8, heads=2)
    ids = torch.randint(1, 40, (3, 10))
    s, e = qa(ids, torch.zeros_like(ids), torch.ones_like(ids))
    assert s.shape == e.shape == (3, 10)
    (s.sum() + e.sum()).backward()
