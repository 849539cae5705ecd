"""The return-value rules of run(): what becomes output lines, successes and failures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from fleetrun.common.errors import EntryScriptError
from fleetrun.worker.entry_script import interpret, takes_context

INPUTS = ["/in/a.png", "/in/b.png", "/in/c.png", "/in/d.png"]


def test_a_list_with_one_element_per_input_succeeds_for_every_item() -> None:
    outcome = interpret(["cat", "dog", 3, 4.5], INPUTS)
    assert outcome.lines == ["cat", "dog", "3", "4.5"]
    assert outcome.succeeded == 4
    assert (outcome.failed_items, outcome.shortfall, outcome.warning) == ([], 0, "")


def test_a_short_list_counts_the_shortfall_without_naming_failed_items() -> None:
    outcome = interpret(["cat", "dog"], INPUTS)
    assert outcome.lines == ["cat", "dog"]
    assert outcome.succeeded == 2
    assert outcome.shortfall == 2
    assert outcome.failed_items == []


def test_an_empty_list_fails_every_item_of_the_batch() -> None:
    outcome = interpret([], INPUTS)
    assert (outcome.lines, outcome.succeeded, outcome.shortfall) == ([], 0, 4)


def test_a_long_list_is_capped_to_one_element_per_input_with_a_warning() -> None:
    outcome = interpret(list(range(7)), INPUTS)
    assert outcome.lines == ["0", "1", "2", "3"]
    assert outcome.succeeded == 4
    assert outcome.shortfall == 0
    assert "7" in outcome.warning and "4" in outcome.warning


def test_a_dict_names_its_missing_keys_as_the_failed_items_and_keeps_input_order() -> None:
    result = {"/in/d.png": "four", "/in/a.png": "one", "/in/c.png": "three"}
    outcome = interpret(result, INPUTS)
    assert outcome.lines == ["one", "three", "four"]
    assert outcome.succeeded == 3
    assert outcome.failed_items == ["/in/b.png"]
    assert outcome.shortfall == 0
    assert outcome.warning == ""


def test_a_dict_with_keys_that_are_not_inputs_ignores_them_with_a_warning() -> None:
    result = {item: i for i, item in enumerate(INPUTS)} | {"/elsewhere.png": 99}
    outcome = interpret(result, INPUTS)
    assert outcome.lines == ["0", "1", "2", "3"]
    assert outcome.succeeded == 4
    assert outcome.warning


def test_a_dataframe_becomes_space_separated_rows_without_header_or_index() -> None:
    frame = pd.DataFrame(
        {"file": ["a.png", "b.png", "c.png", "d.png"], "label": [3, 1, 4, 1]},
        index=[10, 11, 12, 13],
    )
    outcome = interpret(frame, INPUTS)
    assert outcome.lines == ["a.png 3", "b.png 1", "c.png 4", "d.png 1"]
    assert (outcome.succeeded, outcome.shortfall) == (4, 0)


def test_a_short_dataframe_counts_its_missing_rows_as_failed() -> None:
    frame = pd.DataFrame({"file": ["a.png"], "label": [3]})
    outcome = interpret(frame, INPUTS)
    assert outcome.lines == ["a.png 3"]
    assert (outcome.succeeded, outcome.shortfall) == (1, 3)


def test_an_empty_dataframe_fails_every_item() -> None:
    outcome = interpret(pd.DataFrame({"label": []}), INPUTS)
    assert (outcome.lines, outcome.succeeded, outcome.shortfall) == ([], 0, 4)


def test_a_long_dataframe_is_capped_with_a_warning() -> None:
    frame = pd.DataFrame({"label": range(6)})
    outcome = interpret(frame, INPUTS)
    assert outcome.lines == ["0", "1", "2", "3"]
    assert outcome.succeeded == 4
    assert outcome.warning


def test_a_numpy_array_gives_one_line_per_element() -> None:
    outcome = interpret(np.array([7, 8, 9, 10]), INPUTS)
    assert outcome.lines == ["7", "8", "9", "10"]
    assert (outcome.succeeded, outcome.shortfall) == (4, 0)


def test_a_short_numpy_array_counts_the_shortfall() -> None:
    outcome = interpret(np.array([0.5]), INPUTS)
    assert outcome.lines == ["0.5"]
    assert (outcome.succeeded, outcome.shortfall) == (1, 3)


def test_a_tuple_is_taken_like_a_list() -> None:
    outcome = interpret(("w", "x", "y"), INPUTS)
    assert outcome.lines == ["w", "x", "y"]
    assert (outcome.succeeded, outcome.shortfall) == (3, 1)


@pytest.mark.parametrize("returned", [None, 42, "a string", 3.5, {"a", "set"}])
def test_a_return_value_of_another_type_is_refused_with_the_accepted_types(
    returned: Any,
) -> None:
    with pytest.raises(EntryScriptError) as error:
        interpret(returned, INPUTS)
    message = str(error.value)
    assert type(returned).__name__ in message
    for accepted in ("list", "DataFrame", "dict"):
        assert accepted in message


def test_run_with_two_parameters_takes_the_mini_batch_context() -> None:
    def run(mini_batch: list[str], mini_batch_context: Any) -> list[str]:
        return mini_batch

    assert takes_context(run)


def test_run_with_star_args_takes_the_mini_batch_context() -> None:
    def run(*args: Any) -> list[str]:
        return list(args[0])

    assert takes_context(run)


def test_run_with_one_parameter_does_not_take_the_context() -> None:
    def run(mini_batch: list[str]) -> list[str]:
        return mini_batch

    assert not takes_context(run)


def test_run_with_one_parameter_and_keyword_options_does_not_take_the_context() -> None:
    def run(mini_batch: list[str], *, verbose: bool = False, **options: Any) -> list[str]:
        return mini_batch

    assert not takes_context(run)
