"""Verifiable math from a data file: prompts with reference answers, rewarded by the last \\boxed{...}.

    task = MathTask(data="dapo_math.jsonl", eval_data="aime24.jsonl")
    task.train[0]                                   # Example(prompt='... step by step ... \\boxed{}.', answer='34')
    task.reward("... so the answer is \\boxed{34}.", task.train[0])   # 1.0
    task.reward("\\boxed{\\frac{1}{2}}", Example("?", "0.5"))          # 1.0: math-verify equivalence

The reward is 1.0 when the content of the *last* ``\\boxed{...}`` of the completion is mathematically
equal to the reference according to math-verify (``1/2``, ``0.5`` and ``\\frac{1}{2}`` are one answer),
0.0 otherwise: no box, an unclosed box, an empty box, a wrong answer, an answer math-verify cannot parse,
or a check that runs past ``verify_timeout`` seconds. It never raises; any other error of the verifier also
gives 0.0 but is counted (``reward/verifier_errors``), and a batch where most answers fail stops the run.

Data: JSON lines (``.jsonl``), a JSON list (``.json``) or Parquet (``.parquet``) (or a ``datasets``
save_to_disk directory: its train split); one problem per row, read and parsed by rows.py as task=custom's
rows are. ``prompt_field`` and ``answer_field`` name the fields, dotted for nested ones
(``reward_model.ground_truth`` in verl-style files). A prompt is a string, or a list of chat messages
(``{"role": ..., "content": ...}``: the last user message is the problem). ``prompt_pattern``, a regular
expression, optionally cuts the problem out of a dataset's own instructions (its first group is kept).
``prompt_template`` then wraps it (``{prompt}`` is replaced; braces elsewhere are literal, so LaTeX is
safe). A bad row stops loading with an error naming the file, the row and the field, unless
``skip_bad_rows``: then it is skipped and counted in ``task.skipped``. Repeated (prompt, answer) rows are
kept once and counted in ``task.duplicates`` (DAPO-Math-17k's parquet repeats each problem many times).
"""

from __future__ import annotations

import functools
import logging
import random
import re
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from drpo.constants import MATH_PROMPT_TEMPLATE
from drpo.tasks.base import DataTask, Example
from drpo.tasks.data import DataError
from drpo.tasks.rows import parse_rows, read_source

logger = logging.getLogger(__name__)
_BOXED = re.compile(r"\\boxed\s*\{")


# --------------------------------------------------------------------------------------------- the answer
def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (braces inside it balanced), or None.

    None when there is no box, when the last box is never closed (a truncated completion), or when it is
    empty: the last box is the answer, and a malformed last box is no answer.

    >>> last_boxed(r"first \\boxed{1}, then \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed{2} and \\boxed{3") is None, last_boxed("42") is None
    (True, True)
    """
    if not isinstance(text, str):
        return None
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = position = matches[-1].end()  # just after the opening brace
    depth = 1
    while position < len(text):
        char = text[position]
        if char == "\\":  # an escaped character (\{ or \} or \\) never opens or closes a group
            position += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:position].strip() or None
        position += 1
    return None


class VerifierTimeout(Exception):
    """A math-verify parse or comparison ran past its time limit."""


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`VerifierTimeout` in the block after ``seconds`` (SIGALRM timer, main thread only).

    Signals reach only the main thread, so elsewhere (a reward worker thread) the block runs unlimited;
    math-verify's own timeouts have the same restriction, which is why we disable them and use this one.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise VerifierTimeout(f"math-verify took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _NoTimeoutWarning(logging.Filter):
    # math-verify warns once that its own timeouts are disabled; ours (time_limit) replaces them
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@functools.cache
def _math_verify():
    try:
        import math_verify  # lazy: optional dependency (drpo[hf])
    except ImportError as error:
        raise ImportError("task=math needs math-verify: pip install 'math-verify>=0.7' "
                          "(or the project's extra: pip install 'drpo[hf]')") from error
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_NoTimeoutWarning())
    return math_verify


@functools.lru_cache(maxsize=65536)
def _parse_reference(answer: str) -> tuple:
    """math-verify's parse of a reference answer (cached: every sample of a group shares it)."""
    mv = _math_verify()
    parsed = mv.parse(f"${answer}$", parsing_timeout=None)
    return tuple(parsed or mv.parse(f"\\boxed{{{answer}}}", parsing_timeout=None))


# What an unparseable or pathological answer may raise once math-verify has caught its own parse errors (it
# returns [] for text it cannot read): our time limit, and recursion or sympy errors on deeply nested input. Any
# other exception is a broken verifier (an API change, a missing module, a bug), not a wrong answer.
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (VerifierTimeout, RecursionError)


def answers_match(predicted: str, reference: str, timeout: float = 5.0) -> bool:
    """Whether the boxed content ``predicted`` equals ``reference`` per math-verify, within ``timeout`` s.

    An answer that takes too long or that math-verify cannot parse does not match; any other error of the
    verifier propagates (see ``MathTask.reward``, which counts it).

    >>> answers_match(r"\\frac{1}{2}", "0.5"), answers_match("1/2", r"\\frac12"), answers_match("3", "4")
    (True, True, False)
    """
    mv = _math_verify()
    try:
        with time_limit(timeout):
            gold = _parse_reference(reference)
            pred = mv.parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
            return bool(gold and pred and mv.verify(list(gold), pred, timeout_seconds=None))
    except EXPECTED_FAILURES + _sympy_errors():
        return False


@functools.cache
def _sympy_errors() -> tuple[type[BaseException], ...]:
    import sympy  # lazy: math-verify's dependency, optional (drpo[hf])

    return (sympy.SympifyError,)


# --------------------------------------------------------------------------------------------- the data
NEED_ANSWER = "the reward compares the boxed answer with it"  # what a row without a reference is told


def load_examples(path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer",
                  prompt_template: str = "{prompt}", skip_bad_rows: bool = False,
                  prompt_pattern: str | None = None) -> tuple[list[Example], dict[str, int]]:
    """(examples, {"bad_rows": skipped, "duplicates": dropped}) of a data file (see the module docstring).

    The rows are read and parsed by rows.py, as task=custom's are; math's own rules are the prompt pattern and
    template (:func:`prompt_rule`), the answer stripped, and repeated problems kept once (:func:`unique`)."""
    if "{prompt}" not in prompt_template:
        raise DataError(f"prompt_template {prompt_template!r} must contain '{{prompt}}'")
    rule = prompt_rule(prompt_field, prompt_template, compile_prompt_pattern(prompt_pattern))
    label, rows, _ = read_source(Path(path), "data file", fields=(prompt_field, answer_field))
    parsed, bad_rows = parse_rows(rows, label, prompt_field, answer_field, need_answer=NEED_ANSWER,
                                  skip_bad_rows=skip_bad_rows, prompt_rule=rule)
    examples, duplicates = unique(Example(prompt=row.prompt, answer=row.answer.strip()) for row in parsed)
    return examples, {"bad_rows": bad_rows, "duplicates": duplicates}


def compile_prompt_pattern(prompt_pattern: str | None) -> re.Pattern | None:
    if prompt_pattern is None:
        return None
    try:
        pattern = re.compile(prompt_pattern, re.DOTALL)
    except re.error as error:
        raise DataError(f"prompt_pattern {prompt_pattern!r} is not a valid regular expression: {error}") from None
    if pattern.groups < 1:
        raise DataError(f"prompt_pattern {prompt_pattern!r} needs a group (...) around the problem text")
    return pattern


def prompt_rule(field: str, template: str, pattern: re.Pattern | None):
    """The problem text of a row's prompt (cut out by ``pattern``'s first group, when given) in ``template``; a
    :class:`DataError` for a prompt the pattern does not match or cuts down to nothing (a bad row)."""
    def rule(text: str) -> str:
        if pattern is not None:
            match = pattern.search(text)
            if match is None or match.group(1) is None:
                raise DataError(f"column {field!r} does not match task.prompt_pattern {pattern.pattern!r}")
            text = match.group(1)
            if not text.strip():
                raise DataError(f"column {field!r} is empty once task.prompt_pattern cut it")
        return template.replace("{prompt}", text)  # braces elsewhere are literal: LaTeX is safe

    return rule


def unique(examples) -> tuple[list[Example], int]:
    """(the examples, each (prompt, answer) once, in order; how many repeats were dropped)."""
    kept, seen, repeats = [], set(), 0
    for example in examples:
        if example in seen:
            repeats += 1
        else:
            seen.add(example)
            kept.append(example)
    return kept, repeats


# --------------------------------------------------------------------------------------------- the task
class MathTask(DataTask):
    """Math problems from ``data`` (and ``eval_data``), rewarded by math-verify on the last boxed answer.

    Without ``eval_data``, ``n_eval`` problems drawn with ``seed`` are held out of ``data`` for
    evaluation (at most half of them). ``max_prompt_len`` and ``max_response_len`` count tokens of the
    model's tokenizer; the policy drops prompts longer than ``max_prompt_len`` and samples at most
    ``max_response_len`` tokens.
    """

    name = "math"

    def __init__(self, seed: int = 0, data: str | None = None, eval_data: str | None = None,
                 prompt_field: str = "prompt", answer_field: str = "answer",
                 prompt_template: str = MATH_PROMPT_TEMPLATE, prompt_pattern: str | None = None,
                 skip_bad_rows: bool = False, n_eval: int = 100, max_prompt_len: int = 512,
                 max_response_len: int = 1024, verify_timeout: float = 5.0) -> None:
        if data is None:
            raise ValueError("task=math needs a data file: data=FILE.jsonl (or .parquet), and optionally "
                             "task.eval_data=FILE for evaluation")
        if max_prompt_len < 1 or max_response_len < 1 or n_eval < 1:
            raise ValueError(f"math: max_prompt_len, max_response_len and n_eval must be >= 1, got "
                             f"{max_prompt_len}, {max_response_len}, {n_eval}")
        self.seed = seed
        self._max_prompt_len, self._max_response_len = max_prompt_len, max_response_len
        self.verify_timeout = verify_timeout
        self._errors: list[str] = []  # verifier failures since verifier_errors last ran
        options = dict(prompt_field=prompt_field, answer_field=answer_field, prompt_template=prompt_template,
                       skip_bad_rows=skip_bad_rows, prompt_pattern=prompt_pattern)
        train, counts = load_examples(data, **options)
        self.skipped, self.duplicates = {"train": counts["bad_rows"], "eval": 0}, {"train": counts["duplicates"], "eval": 0}
        if eval_data is not None:
            self.train = train
            self.eval, counts = load_examples(eval_data, **options)
            self.skipped["eval"], self.duplicates["eval"] = counts["bad_rows"], counts["duplicates"]
        else:
            if len(train) < 2:
                raise DataError(f"data file {data} has {len(train)} usable row; holding out evaluation problems "
                                "needs at least 2, or give task.eval_data=FILE")
            held_out = set(random.Random(seed).sample(range(len(train)), min(n_eval, len(train) // 2)))
            self.eval = [ex for i, ex in enumerate(train) if i in held_out]
            self.train = [ex for i, ex in enumerate(train) if i not in held_out]

    def reward(self, completion: str, example: Example) -> float:
        """1.0 if the last ``\\boxed{...}`` of ``completion`` equals ``example.answer`` (math-verify), else 0.0.

        A verifier error that is not a timeout or a parse failure also gives 0.0, but is counted (and the first
        one of a batch logged with its traceback): :meth:`verifier_errors` reports them."""
        predicted = last_boxed(completion)
        if predicted is None or not isinstance(example.answer, str):
            return 0.0
        try:
            return 1.0 if answers_match(predicted, example.answer, self.verify_timeout) else 0.0
        except Exception as error:  # noqa: BLE001  (counted and reported, see verifier_errors)
            if not self._errors:
                logger.warning("math-verify failed on answer %r (reference %r); counted in reward/verifier_errors",
                               predicted, example.answer, exc_info=True)
            self._errors.append(f"{type(error).__name__}: {error}")
            return 0.0

    def verifier_errors(self, rewards: int) -> int:
        """How many of the last ``rewards`` rewards the verifier failed to compute (0.0 given, not a wrong
        answer); the count restarts. Raises when that is more than half of them: the run would train on
        zeros."""
        errors, self._errors = self._errors, []
        if len(errors) * 2 > rewards:
            raise RuntimeError(f"the math verifier failed on {len(errors)} of {rewards} answers (not wrong answers: "
                               f"errors of math-verify or sympy), e.g. {errors[0]}. Check the installed math-verify "
                               "(pip install 'math-verify>=0.7') and sympy")
        return len(errors)

    def target(self, example: Example) -> str:
        return f"The answer is $\\boxed{{{example.answer}}}$."
