"""The ledger's canonical JSON gives rfc8785's bytes, fast path or not, and fails where it fails."""

from __future__ import annotations

import random
from typing import Any

import pytest
import rfc8785

from access.broker.audit import canonical

EDGE_STRINGS = [
    "",
    "plain",
    'quote " and backslash \\',
    "controls \x00\x01\x07\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f end",
    "\x7f delete is not escaped",
    "line separators \u2028 \u2029",
    "accents é ü ñ, CJK 漢字, emoji 🙂 (astral)",
    "\ufeff byte order mark",
    "SELECT * FROM t WHERE name = 'O''Brien';\n-- comment\t",
    "\ud800 lone high surrogate",
    "lone low \udfff",
    "/ slash </script>",
]
EDGE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**53 - 1,
    -(2**53 - 1),
    2**53,
    -(2**53),
    10**30,
    1.5,
    float("inf"),
    (1, 2),
    {"b": 1, "a": [1, "x"], "A": None, "_": {}, "aa": [], "a b": True},
    {"ключ": 1, "k": 2},
    {"\U0001f642": 1, "\uffff": 2},  # UTF-16 order differs from code point order
    {1: "non-string key"},
    [[[[["deep"]]]]],
]


class _Str(str):
    pass


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(8 if depth < 4 else 5)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.choice([rng.randrange(-1000, 1000), rng.randrange(-(2**60), 2**60)])
    if pick in (2, 3):
        alphabet = 'ab"\\\x00\x1f\x7f\n\t é漢🙂\u2028'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if pick == 4:
        return rng.choice([_Str("sub"), 0.25, (1,), "\udc80"]) if rng.random() < 0.05 else "s"
    if pick in (5, 6):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["a", "B", "a_b", "z9", "é", "🙂"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _same(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        with pytest.raises(type(exc)):
            canonical.dumps(value)
        return
    assert canonical.dumps(value) == expected, repr(value)


@pytest.mark.parametrize("value", EDGE_STRINGS + EDGE_VALUES + [[s] for s in EDGE_STRINGS], ids=repr)
def test_edge_cases_match_rfc8785(value: Any) -> None:
    _same(value)


def test_random_values_match_rfc8785() -> None:
    rng = random.Random(8785)
    for _ in range(3000):
        _same(_random_value(rng))


def test_statement_batches_take_the_fast_path() -> None:
    batch = {"statements": [[i, "query", f"SELECT {i} -- é"] for i in range(500)], "first": 0}
    assert canonical._plain(batch)
    assert not canonical._plain({"statements": [[0, "query", "\ud800"]]})
    assert not canonical._plain({"at": 1.5})


def test_a_plain_list_encodes_as_rfc8785_would() -> None:
    batch = canonical.Plain(
        [canonical.Plain((i, "query", f"SELECT '{chr(0x40 + i)}é\n'")) for i in range(50)]
    )
    assert canonical.dumps({"statements": batch, "first": 0}) == rfc8785.dumps(
        {"statements": batch, "first": 0}
    )
