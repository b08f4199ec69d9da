"""The ``__main__`` guard a split engine needs: its workers are started with ``spawn``, which imports the main
script again in each of them. :func:`check_main_guard` refuses, before any process starts, an engine built by
unguarded top-level code; :func:`guard_hint` explains a worker that died of it anyway."""

from __future__ import annotations

import ast
import sys
import tokenize

#: Text of the error a spawned child raises when the main script builds the engine outside a ``__main__`` guard.
_GUARD_MARKERS = (
    "_check_not_importing_main",
    "bootstrapping phase",
    "freeze_support()",
    "that is not under an `if __name__",
)  # the last: check_main_guard() refusing in the worker


def guard_hint(tail: str) -> str:
    """How to fix a worker that re-ran the user's script because it has no ``__main__`` guard, if its stderr
    ``tail`` shows that; else ``""``."""
    if not any(marker in tail for marker in _GUARD_MARKERS):
        return ""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    script = f" ({main})" if main else ""
    return (
        '\nCause: the script that builds the LLM has no `if __name__ == "__main__":` guard. The worker processes '
        "are started with 'spawn', which imports the main script again in each worker; without the guard each "
        f"worker re-ran the script{script} from the top and tried to start its own workers. {_GUARD_FIX}"
    )


_GUARD_FIX = (
    'Fix: put the code that builds and uses the LLM under `if __name__ == "__main__":` (as vLLM requires).'
)


def first_unguarded_line(source: str, lines: list[int]) -> int | None:
    """The first of ``lines`` (top-level lines of a script's ``source``) that is not inside an ``if`` testing
    ``__name__``; ``None`` if all are. Any ``if`` whose test names ``__name__`` counts as a guard (no false alarm
    for ``if "__main__" == __name__`` or ``if __name__ != "__mp_main__"``)."""
    tree = ast.parse(source)
    guards = [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))
    ]
    for line in lines:
        if not any(start <= line <= end for start, end in guards):
            return line
    return None


def check_main_guard() -> None:
    """Refuse, before any process starts, to build an engine from top-level code of a main script that ``spawn``
    will run again in every worker (no ``if __name__ == "__main__":`` guard): each worker would build the engine
    again and die. Mirrors ``multiprocessing.spawn``'s rule for when it re-runs the main module. Anything it cannot
    tell (no source, an interactive session, a thread) passes: a worker that dies anyway is reported by rank, with
    the same advice when its stderr shows this cause."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if (
        main is None
        or not path
        or (spec_name is not None and (spec_name == "__main__" or spec_name.endswith(".__main__")))
    ):
        return  # `python -c`, a notebook, `python -m package`: spawn does not run the main module again
    lines = []
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            lines.append(frame.f_lineno)
        frame = frame.f_back
    if not lines:
        return
    try:
        with tokenize.open(path) as f:
            line = first_unguarded_line(f.read(), lines)
    except (OSError, SyntaxError, ValueError):
        return
    if line is not None:
        raise RuntimeError(
            f"a split engine (tensor_parallel_size/pipeline_parallel_size > 1) is being built by top-level code of "
            f'{path} (line {line}) that is not under an `if __name__ == "__main__":` guard. Its worker processes '
            "are started with 'spawn', which imports that script again in each worker: without the guard every "
            f"worker would run this line again and fail. {_GUARD_FIX}"
        )


__all__ = ["check_main_guard", "first_unguarded_line", "guard_hint"]
