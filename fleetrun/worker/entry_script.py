"""Loading a user's entry script and holding it to the contract.

``init()`` once, ``run(mini_batch)`` (or ``run(mini_batch, mini_batch_context)`` when it takes
two parameters) per batch, optional ``shutdown()``. What ``run()`` returns is turned into output
lines and counts here, the one place that knows the return-value rules.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fleetrun.common.errors import EntryScriptError


@dataclass(frozen=True)
class MiniBatchContext:
    """The second argument of ``run(mini_batch, mini_batch_context)``."""

    minibatch_index: int
    partition_key_value: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one successful ``run()`` call produced, in input order."""

    values: Any  # the successful elements: a list, or a DataFrame (tabular, keep_columns)
    succeeded: int
    failed_items: list[str]  # known failures (the missing keys of a dict return)
    shortfall: int  # failures whose items are unknown (a short return)
    warning: str = ""

    @property
    def lines(self) -> list[str]:
        """The elements as ParallelRunStep writes them: ``str(element)``, or a DataFrame's rows
        space-separated, with no header and no index."""
        if _is_frame(self.values):
            return _lines_of_frame(self.values)
        return [str(value) for value in self.values]


def load(script: Path, code_dir: Path) -> ModuleType:
    """Import the entry script as a top-level module, with its folder importable."""
    if not script.is_file():
        raise EntryScriptError(f"entry script {script} does not exist")
    sys.path.insert(0, str(code_dir))
    if script.parent != code_dir:
        sys.path.insert(0, str(script.parent))
    name = script.stem
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise EntryScriptError(f"cannot import {script} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise EntryScriptError(f"{script} defines no run(mini_batch) function: add one")
    return module


def takes_context(run: Callable[..., Any]) -> bool:
    """True when ``run`` accepts a second positional argument (the mini-batch context)."""
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def _lines_of_frame(frame: Any) -> list[str]:
    if frame.empty:
        return []
    # ParallelRunStep's format: space-separated, no header, no index.
    text: str = frame.to_csv(sep=" ", header=False, index=False, lineterminator="\n")
    return text.splitlines()


def interpret(
    result: Any,
    inputs: Sequence[str],
    input_frame: Any = None,
    keep_columns: Sequence[str] = (),
) -> Outcome:
    """Apply the return-value rules of the contract to what ``run()`` returned.

    ``inputs`` are the batch's files; for a tabular batch, ``input_frame`` is the DataFrame
    ``run()`` was given, and its rows are the items.
    """
    expected = len(input_frame) if input_frame is not None else len(inputs)
    if isinstance(result, Mapping) and input_frame is None:
        values: Any = []
        missing: list[str] = []
        for item in inputs:
            if item in result:
                values.append(result[item])
            else:
                missing.append(item)
        unknown = [k for k in result if k not in set(inputs)]
        warning = f"ignored {len(unknown)} keys that are not inputs of the batch" if unknown else ""
        return Outcome(values, expected - len(missing), missing, 0, warning)
    if _is_frame(result) or _is_series(result):
        values = result.to_frame() if _is_series(result) else result
    elif isinstance(result, list | tuple) or _is_array(result):
        values = list(result)
    else:
        hint = (
            "a pandas DataFrame"
            if input_frame is not None
            else "a dict mapping each input to its result"
        )
        raise EntryScriptError(
            f"run() returned {type(result).__name__}; return a list, a tuple, an array, a "
            f"pandas DataFrame or {hint}"
        )
    count = len(values)
    warning = ""
    if count > expected:
        # One element per input is the contract; extra elements are dropped, not guessed at.
        warning = (
            f"run() returned {count} elements for {expected} inputs; kept the first {expected}"
        )
        values = values.iloc[:expected] if _is_frame(values) else values[:expected]
        count = expected
    if keep_columns and input_frame is not None:
        values = _with_kept_columns(values, input_frame, keep_columns)
    return Outcome(values, count, [], expected - count, warning)


def _with_kept_columns(values: Any, input_frame: Any, keep: Sequence[str]) -> Any:
    """The input's ``keep`` columns in front of each output row (SageMaker's join-with-input)."""
    import pandas as pd

    missing = [c for c in keep if c not in input_frame.columns]
    if missing:
        raise EntryScriptError(f"keep_columns {missing} are not columns of the input")
    frame = values if _is_frame(values) else pd.DataFrame({"result": values})
    if len(frame) == len(input_frame):
        kept = input_frame[list(keep)].reset_index(drop=True)
    elif _is_frame(values) and frame.index.isin(input_frame.index).all():
        kept = input_frame.loc[frame.index, list(keep)].reset_index(drop=True)
    else:
        raise EntryScriptError(
            "keep_columns needs run() to return one row per input row, or a DataFrame whose "
            "index holds the input rows it answers (return df.loc[ok_rows] to skip some)"
        )
    body = frame.reset_index(drop=True).drop(columns=[c for c in keep if c in frame.columns])
    return pd.concat([kept, body], axis=1)


def _is_frame(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "to_csv")


def _is_series(value: Any) -> bool:
    return type(value).__name__ == "Series" and hasattr(value, "to_frame")


def _is_array(value: Any) -> bool:
    return type(value).__name__ == "ndarray" and hasattr(value, "tolist")
