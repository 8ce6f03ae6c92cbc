"""Arguments: stored as the job gets them, or refused before any SQL."""

from __future__ import annotations

import decimal
import uuid
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import transaction

from klerk_django import arguments, attempts, leases
from klerk_django.exceptions import ArgumentError
from klerk_django.models import Action, Job
from tests.testapp.actions import note_action
from tests.testapp.more_jobs import noop, odd_error, odd_result

WORKER = uuid.UUID(int=7)

JSON_VALUES = [
    pytest.param("plain text", id="str"),
    pytest.param("", id="empty-str"),
    pytest.param("üñíçødé ✓ 𝄞 中文", id="unicode"),
    pytest.param('quote" back\\slash \\u0000 \n\t', id="escapes"),
    pytest.param(0, id="zero"),
    pytest.param(-17, id="negative"),
    pytest.param(2**63 - 1, id="int64-max"),
    pytest.param(-(2**63), id="int64-min"),
    pytest.param(2**70, id="bigint"),
    pytest.param(0.0, id="float-zero"),
    pytest.param(0.1, id="float-tenth"),
    pytest.param(-2.5, id="float-negative"),
    pytest.param(1.0, id="float-integral"),
    pytest.param(1e-7, id="float-small"),
    pytest.param(123456789.125, id="float-fraction"),
    pytest.param(9999999999999998.0, id="float-largest-accepted"),
    pytest.param(5e-324, id="float-subnormal"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(None, id="none"),
    pytest.param([], id="empty-list"),
    pytest.param({}, id="empty-dict"),
    pytest.param([1, "a", None, [2.5, [False]]], id="nested-list"),
    pytest.param({"a": {"b": [1, {"c": None}]}, "": 0, "é k": "v"}, id="nested-dict"),
]


def same(left, right) -> bool:
    """Return whether two values are equal and of the same types throughout."""
    if type(left) is not type(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(
            same(left[key], right[key]) for key in left
        )
    return left == right


def claim_one() -> leases.ClaimedJob:
    [claimed] = leases.claim(WORKER, None, 1)
    return claimed


@pytest.mark.django_db
@pytest.mark.parametrize("value", JSON_VALUES)
def test_json_value_round_trips_exactly(value):
    noop.enqueue(value, [value], named=value)

    args, kwargs = arguments.unpack(claim_one().arguments)

    assert same(args, [value, [value]])
    assert same(kwargs, {"named": value})


@pytest.mark.django_db
@pytest.mark.parametrize("number", [1e16, -1e16, 1.7976931348623157e308])
def test_float_that_would_come_back_changed_is_refused(
    number, django_assert_num_queries
):
    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        noop.enqueue(ok=9999999999999998.0, big=number)

    assert "'big'" in str(caught.value)
    assert "1e16" in str(caught.value)


@pytest.mark.django_db
def test_deepest_accepted_nesting_round_trips():
    deepest: list = ["core"]
    for _ in range(arguments.MAX_NESTING - 1):
        deepest = [deepest]
    table = {"k": deepest[0]}

    noop.enqueue(deepest, table=table)

    args, kwargs = arguments.unpack(claim_one().arguments)
    assert args == [deepest]
    assert kwargs == {"table": table}


@pytest.mark.django_db(transaction=True)
def test_one_megabyte_of_arguments_commits_and_round_trips():
    big = "x" * (1024 * 1024)

    with transaction.atomic():
        noop.enqueue(big, part={"tail": big[:1000]})

    args, kwargs = arguments.unpack(claim_one().arguments)
    assert args == [big]
    assert kwargs == {"part": {"tail": big[:1000]}}


REFUSED = [
    pytest.param(
        datetime(2024, 1, 1, tzinfo=dt_timezone.utc), "datetime", id="datetime"
    ),
    pytest.param(date(2024, 1, 1), "date", id="date"),
    pytest.param(timedelta(seconds=1), "timedelta", id="timedelta"),
    pytest.param(uuid.UUID(int=1), "UUID", id="uuid"),
    pytest.param(decimal.Decimal("1.5"), "Decimal", id="decimal"),
    pytest.param((1, 2), "tuple", id="tuple"),
    pytest.param({1, 2}, "set", id="set"),
    pytest.param(frozenset(), "frozenset", id="frozenset"),
    pytest.param(b"bytes", "bytes", id="bytes"),
    pytest.param(bytearray(b"x"), "bytearray", id="bytearray"),
    pytest.param(object(), "object", id="object"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("value, type_name", REFUSED)
def test_value_that_is_not_json_is_refused_before_any_sql(
    value, type_name, django_assert_num_queries
):
    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        noop.enqueue(1, {"deep": [0, value]})

    assert caught.value.path == "args[1]['deep'][1]"
    assert "args[1]['deep'][1]" in str(caught.value)
    assert repr(type_name) in str(caught.value)


@pytest.mark.django_db
@pytest.mark.parametrize("key", [1, 2.5, None, True, (1, 2)])
def test_dict_key_that_is_not_a_string_is_refused(key, django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        noop.enqueue(options={key: "value"})

    assert "'options'" in str(caught.value)
    assert repr(type(key).__name__) in str(caught.value)


@pytest.mark.django_db
@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_float_that_json_cannot_hold_is_refused(number, django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        noop.enqueue([number])

    assert "'args[0][0]'" in str(caught.value)


NUL_CALLS = [
    pytest.param(("a\x00b",), {}, "args[0]", id="positional"),
    pytest.param(([["\x00"]],), {}, "args[0][0][0]", id="nested"),
    pytest.param(({"k\x00": 1},), {}, "args[0]", id="key"),
    pytest.param((), {"text": "\x00"}, "text", id="keyword"),
    pytest.param((), {"na\x00me": 1}, "na\x00me", id="keyword-name"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("args, kwargs, path", NUL_CALLS)
def test_nul_character_is_refused_before_any_sql(
    args, kwargs, path, django_assert_num_queries
):
    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        noop.enqueue(*args, **kwargs)

    assert "NUL" in str(caught.value)
    assert caught.value.path.startswith(path)


@pytest.mark.django_db
@pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
def test_lone_surrogate_is_refused_before_any_sql(text, django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        noop.enqueue({text: 1})

    assert "surrogate" in str(caught.value)

    with django_assert_num_queries(0), pytest.raises(ArgumentError):
        noop.enqueue(text)


@pytest.mark.django_db
def test_value_that_contains_itself_is_refused(django_assert_num_queries):
    loop: list = []
    loop.append(loop)
    table: dict = {}
    table["self"] = table

    for value in (loop, table):
        with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
            noop.enqueue(value)
        assert "contains itself" in str(caught.value)


@pytest.mark.django_db
@pytest.mark.parametrize("levels", [arguments.MAX_NESTING + 1, 100_000])
def test_value_nested_too_deeply_is_refused(levels, django_assert_num_queries):
    deep: list = []
    for _ in range(levels - 1):
        deep = [deep]

    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        noop.enqueue(deep)

    assert f"at most {arguments.MAX_NESTING} levels" in str(caught.value)


@pytest.mark.django_db
def test_shared_value_that_is_no_cycle_is_accepted():
    shared = {"a": 1}

    job = noop.enqueue([shared, shared], {"x": shared})

    assert job.arguments["args"] == [[{"a": 1}, {"a": 1}], {"x": {"a": 1}}]


@pytest.mark.django_db
def test_size_limit_gives_an_error_naming_it(settings, django_assert_num_queries):
    settings.KLERK_MAX_ARGUMENTS_BYTES = 1000

    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        noop.enqueue("x" * 1000)

    assert "KLERK_MAX_ARGUMENTS_BYTES" in str(caught.value)
    assert "1000" in str(caught.value)
    noop.enqueue("x" * 900)


@pytest.mark.django_db
def test_no_size_limit_when_set_to_none(settings):
    settings.KLERK_MAX_ARGUMENTS_BYTES = None

    assert noop.enqueue("x" * 5 * 1024 * 1024).pk


@pytest.mark.django_db
def test_scheduling_options_are_not_arguments():
    run_after = datetime(2030, 1, 1, tzinfo=dt_timezone.utc)

    job = noop.using(run_after=run_after, priority=3, queue="other").enqueue(
        queue="ignored", priority=9, run_after="later"
    )

    job.refresh_from_db()
    assert (job.queue, job.priority, job.run_after) == ("other", 3, run_after)
    assert job.arguments == {
        "args": [],
        "kwargs": {"queue": "ignored", "priority": 9, "run_after": "later"},
    }


@pytest.mark.django_db
def test_action_arguments_are_checked_before_any_sql(django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(ArgumentError) as caught:
        note_action.request(key=uuid.uuid4())

    assert "'key'" in str(caught.value)
    assert not Action.objects.exists()


@pytest.mark.django_db
def test_enqueue_many_stores_nothing_when_one_call_is_refused(
    django_assert_num_queries,
):
    calls = [(("fine",), {}), (("\x00",), {})]

    with django_assert_num_queries(0), pytest.raises(ArgumentError):
        noop.enqueue_many(calls)

    assert not Job.objects.exists()


def test_unpack_refuses_stored_arguments_that_are_not_an_object():
    with pytest.raises(ArgumentError):
        arguments.unpack("[1, 2]")


@pytest.mark.parametrize(
    "value, stored",
    [
        pytest.param("a\x00b", "a\\x00b", id="nul"),
        pytest.param("\\u0000", "\\u0000", id="escaped-nul-text"),
        pytest.param("\\\x00", "\\\\x00", id="backslash-then-nul"),
        pytest.param("\ud800", "\\ud800", id="surrogate"),
        pytest.param(float("nan"), "nan", id="nan"),
        pytest.param({"k\x00": [float("inf")]}, {"k\\x00": ["inf"]}, id="nested"),
        pytest.param({1: (2, 3)}, {"1": [2, 3]}, id="int-key-and-tuple"),
        pytest.param(b"x", "b'x'", id="bytes"),
    ],
)
def test_scrub_makes_results_storable(value, stored):
    assert arguments.scrub(value) == stored


def test_scrub_survives_cycles_and_depth():
    loop: list = [1]
    loop.append(loop)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]

    assert arguments.scrub(loop)[0] == 1
    assert isinstance(arguments.scrub(deep), (str, list))


def test_scrub_text_escapes_nul_and_surrogates():
    assert arguments.scrub_text("a\x00\udc80") == "a\\x00\\udc80"


@pytest.mark.django_db
def test_scrubbed_values_are_stored_by_every_database():
    deep: list = []
    for _ in range(100):
        deep = [deep]
    value = {"text": "\\u0000 \x00 \ud800", "deep": deep, "nan": float("nan")}
    job = noop.enqueue()

    Job.objects.filter(pk=job.pk).update(result=arguments.scrub(value))

    job.refresh_from_db()
    assert job.result["text"] == "\\u0000 \\x00 \\ud800"
    assert job.result["nan"] == "nan"


@pytest.mark.django_db
def test_job_with_an_odd_result_ends_succeeded():
    stored = odd_result.enqueue()

    assert attempts.run(claim_one(), WORKER) == "succeeded"

    stored.refresh_from_db()
    assert stored.result == {
        "nul": "a\\x00b",
        "escaped": "\\u0000",
        "nan": "nan",
        "key\\x00": 1,
    }


@pytest.mark.django_db
def test_job_with_an_odd_error_ends_failed():
    stored = odd_error.enqueue()

    assert attempts.run(claim_one(), WORKER) == "failed"

    stored.refresh_from_db()
    assert stored.last_error == "RuntimeError: bad \\x00 byte \\ud800"
