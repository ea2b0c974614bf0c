"""Bitvavo request signing (reference/bitvavo-api.md, Authentication)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from shared.exchange.signing import encode_body, signature

OFFICIAL_BODY = {
    "market": "BTC-EUR",
    "side": "buy",
    "price": "5000",
    "amount": "1.23",
    "orderType": "limit",
}


def test_official_vector_is_reproduced() -> None:
    body = encode_body(OFFICIAL_BODY)
    assert body == (
        '{"market":"BTC-EUR","side":"buy","price":"5000","amount":"1.23","orderType":"limit"}'
    )
    assert (
        signature("bitvavo", 1548172481125, "POST", "/order", body)
        == "44d022723a20973a18f7ee97398b9fdd405d2d019c8d39e24b8cc0dcb39ca016"
    )


def test_method_is_case_insensitive() -> None:
    body = encode_body(OFFICIAL_BODY)
    assert signature("bitvavo", 1548172481125, "post", "/order", body) == signature(
        "bitvavo", 1548172481125, "POST", "/order", body
    )


def test_get_and_delete_sign_no_body() -> None:
    for method in ("GET", "DELETE"):
        assert signature("s", 1, method, "/order?market=BTC-EUR", "{}") == signature(
            "s", 1, method, "/order?market=BTC-EUR"
        )


def test_query_is_part_of_the_signature() -> None:
    assert signature("s", 1, "GET", "/balance") != signature("s", 1, "GET", "/balance?symbol=EUR")


def test_path_must_be_relative_to_the_api_root() -> None:
    with pytest.raises(ValueError):
        signature("s", 1, "GET", "balance")


def test_body_keeps_key_order_and_is_compact() -> None:
    body = encode_body({"b": "1", "a": {"y": "2", "x": [1, True, None]}})
    assert body == '{"b":"1","a":{"y":"2","x":[1,true,null]}}'
    assert list(json.loads(body)) == ["b", "a"]


@pytest.mark.parametrize("amount", [1.23, Decimal("1.23")])
def test_body_refuses_float_and_unrendered_decimal(amount: object) -> None:
    with pytest.raises(TypeError, match="strings"):
        encode_body({"market": "BTC-EUR", "amount": amount})
    with pytest.raises(TypeError):
        encode_body({"nested": [{"price": amount}]})
