"""The sandbox exchange over real HTTP: shapes, error codes, money, matching, faults, limits.

Signs requests with a small local signer (not shared.exchange), so a bug in our own client
cannot hide a bug in the sandbox or the other way round.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest

from sandbox import bitvavo
from sandbox.auth import sign
from tests.sandbox_server import SandboxServer, start_sandbox

MARKET = "BTC-EUR"
OPERATOR_ID = 424242
FEE_TAKER = Decimal("0.0025")
FEE_MAKER = Decimal("0.0015")


class Signer:
    """Just enough of a Bitvavo client to drive the sandbox."""

    def __init__(self, sandbox: SandboxServer, key: str, secret: str) -> None:
        self.base = sandbox.rest_url
        self.key, self.secret = key, secret
        self.http = httpx.Client(timeout=5.0)

    def request(self, method: str, target: str, body: Any = None, *, raw: bytes | None = None,
                timestamp: int | None = None, window: str | None = "10000",
                headers: dict[str, str] | None = None, signed_body: str | None = None,
                secret: str | None = None) -> httpx.Response:
        content = raw if raw is not None else (
            json.dumps(body, separators=(",", ":")).encode() if body is not None else b"")
        ts = timestamp if timestamp is not None else int(time.time() * 1000)
        payload = signed_body if signed_body is not None else content.decode()
        all_headers = {
            "Bitvavo-Access-Key": self.key,
            "Bitvavo-Access-Timestamp": str(ts),
            "Bitvavo-Access-Signature": sign(secret or self.secret, ts, method, target, payload),
        }
        if window is not None:
            all_headers["Bitvavo-Access-Window"] = window
        if content:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        return self.http.request(method, self.base + target, content=content,
                                 headers=all_headers)

    def get(self, target: str, **kw: Any) -> httpx.Response:
        return self.request("GET", target, **kw)

    def order(self, **fields: Any) -> httpx.Response:
        body = {"market": MARKET, "side": "buy", "orderType": "market",
                "operatorId": OPERATOR_ID, "clientOrderId": str(uuid.uuid4())}
        body.update(fields)
        return self.request("POST", "/order", {k: v for k, v in body.items() if v is not None})


@pytest.fixture
def trade(bitvavo_sandbox: SandboxServer) -> Signer:
    return Signer(bitvavo_sandbox, bitvavo_sandbox.trade_key, bitvavo_sandbox.trade_secret)


@pytest.fixture
def view(bitvavo_sandbox: SandboxServer) -> Signer:
    return Signer(bitvavo_sandbox, bitvavo_sandbox.view_key, bitvavo_sandbox.view_secret)


def public(sandbox: SandboxServer, target: str) -> httpx.Response:
    return httpx.get(sandbox.rest_url + target, timeout=5.0)


def assert_error(response: httpx.Response, http_status: int, code: int) -> dict[str, Any]:
    assert response.status_code == http_status, response.text
    body = response.json()
    assert body["errorCode"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    return body


def balances(signer: Signer) -> dict[str, tuple[Decimal, Decimal]]:
    response = signer.get("/balance")
    assert response.status_code == 200, response.text
    return {row["symbol"]: (Decimal(row["available"]), Decimal(row["inOrder"]))
            for row in response.json()}


# -- signatures ----------------------------------------------------------------------------


def test_signature_matches_the_official_test_vector() -> None:
    body = '{"market":"BTC-EUR","side":"buy","price":"5000","amount":"1.23","orderType":"limit"}'
    assert sign("bitvavo", 1548172481125, "POST", "/order", body) == (
        "44d022723a20973a18f7ee97398b9fdd405d2d019c8d39e24b8cc0dcb39ca016")


def test_sdk_style_body_with_spaces_signed_compact_is_accepted(trade: Signer) -> None:
    body = {"market": MARKET, "side": "buy", "orderType": "market", "amountQuote": "10",
            "operatorId": OPERATOR_ID}
    response = trade.request("POST", "/order", raw=json.dumps(body).encode(),
                             signed_body=json.dumps(body, separators=(",", ":")))
    assert response.status_code == 200, response.text


def test_sdk_style_empty_json_body_on_get_is_not_signed(trade: Signer) -> None:
    response = trade.request("GET", "/balance", raw=b"{}", signed_body="")
    assert response.status_code == 200, response.text


def test_signature_covers_the_raw_query_encoded_or_not(trade: Signer) -> None:
    order = trade.order(amountQuote="10").json()
    cid = order["clientOrderId"]
    assert trade.get(f"/order?market={MARKET}&clientOrderId={cid}").status_code == 200
    encoded = f"/order?market={MARKET}&clientOrderId={cid.replace('-', '%2D')}"
    assert trade.get(encoded).json()["orderId"] == order["orderId"]


def test_header_names_are_case_insensitive(bitvavo_sandbox: SandboxServer) -> None:
    ts = int(time.time() * 1000)
    headers = {
        "BITVAVO-ACCESS-KEY": bitvavo_sandbox.view_key,
        "bitvavo-access-timestamp": str(ts),
        "Bitvavo-Access-SIGNATURE": sign(bitvavo_sandbox.view_secret, ts, "GET", "/balance"),
    }
    response = httpx.get(bitvavo_sandbox.rest_url + "/balance", headers=headers, timeout=5)
    assert response.status_code == 200, response.text


def test_public_calls_work_signed_and_unsigned(bitvavo_sandbox: SandboxServer,
                                               view: Signer) -> None:
    assert public(bitvavo_sandbox, "/time").status_code == 200
    assert view.get("/markets").status_code == 200


# -- public endpoints ----------------------------------------------------------------------


def test_time(bitvavo_sandbox: SandboxServer) -> None:
    body = public(bitvavo_sandbox, "/time").json()
    assert abs(body["time"] - time.time() * 1000) < 5_000


def test_markets_list_and_single(bitvavo_sandbox: SandboxServer) -> None:
    rows = public(bitvavo_sandbox, "/markets").json()
    names = {row["market"] for row in rows}
    assert {"BTC-EUR", "ETH-EUR", "SOL-EUR", "XRP-EUR"} <= names
    for row in rows:
        assert row["status"] == "trading"
        assert row["minOrderInQuoteAsset"] == "5"
        Decimal(row["minOrderInBaseAsset"]), Decimal(row["tickSize"])
        assert isinstance(row["quantityDecimals"], int)
        assert isinstance(row["notionalDecimals"], int)
        assert {"market", "limit"} <= set(row["orderTypes"])
        assert {"base", "quote", "maxOrderInBaseAsset", "maxOrderInQuoteAsset",
                "pricePrecision", "maxOpenOrders", "feeCategory"} <= set(row)
        assert row["pricePrecision"] is None  # Bitvavo since v2.12.0: tickSize rules prices
    single = public(bitvavo_sandbox, "/markets?market=ETH-EUR").json()
    assert single["market"] == "ETH-EUR"
    assert_error(public(bitvavo_sandbox, "/markets?market=NOPE-EUR"), 400, 205)


def test_assets(bitvavo_sandbox: SandboxServer) -> None:
    rows = public(bitvavo_sandbox, "/assets").json()
    assert {"EUR", "BTC", "ETH"} <= {row["symbol"] for row in rows}
    btc = public(bitvavo_sandbox, "/assets?symbol=BTC").json()
    assert btc["decimals"] == 8 and btc["depositStatus"] == "OK" and btc["networks"]


def test_book(bitvavo_sandbox: SandboxServer) -> None:
    book = public(bitvavo_sandbox, f"/{MARKET}/book?depth=3").json()
    assert book["market"] == MARKET and isinstance(book["nonce"], int)
    assert len(book["bids"]) == 3 and len(book["asks"]) == 3
    bids = [Decimal(price) for price, _ in book["bids"]]
    asks = [Decimal(price) for price, _ in book["asks"]]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    assert bids[0] < asks[0]
    assert_error(public(bitvavo_sandbox, f"/{MARKET}/book?depth=0"), 400, 205)
    assert_error(public(bitvavo_sandbox, "/DOGE-EUR/book"), 400, 205)


def test_public_trades_newest_first(bitvavo_sandbox: SandboxServer) -> None:
    rows = public(bitvavo_sandbox, f"/{MARKET}/trades?limit=5").json()
    assert len(rows) == 5
    assert [r["timestamp"] for r in rows] == sorted((r["timestamp"] for r in rows), reverse=True)
    assert {"id", "timestamp", "amount", "price", "side"} == set(rows[0])


def test_candles_shape_and_order(bitvavo_sandbox: SandboxServer) -> None:
    rows = public(bitvavo_sandbox, f"/{MARKET}/candles?interval=1m&limit=10").json()
    assert len(rows) == 10
    stamps = [row[0] for row in rows]
    assert stamps == sorted(stamps, reverse=True)
    assert all(b - a == -60_000 for a, b in zip(stamps, stamps[1:], strict=False))
    for ts, o, h, low, c, v in rows:
        assert isinstance(ts, int) and all(isinstance(x, str) for x in (o, h, low, c, v))
        assert Decimal(low) <= min(Decimal(o), Decimal(c)) <= max(Decimal(o), Decimal(c)) \
            <= Decimal(h)
    hourly = public(bitvavo_sandbox, f"/{MARKET}/candles?interval=1h&limit=3").json()
    assert len(hourly) == 3 and all(row[0] % 3_600_000 == 0 for row in hourly)
    end = stamps[-1]
    bounded = public(bitvavo_sandbox,
                     f"/{MARKET}/candles?interval=1m&start={end - 120_000}&end={end}").json()
    assert [row[0] for row in bounded] == [end - 60_000, end - 120_000]  # end is exclusive
    assert_error(public(bitvavo_sandbox, f"/{MARKET}/candles"), 400, 203)
    assert_error(public(bitvavo_sandbox, f"/{MARKET}/candles?interval=7m"), 400, 205)


def test_tickers_list_or_object(bitvavo_sandbox: SandboxServer) -> None:
    prices = public(bitvavo_sandbox, "/ticker/price").json()
    assert isinstance(prices, list) and {"market", "price"} == set(prices[0])
    one = public(bitvavo_sandbox, f"/ticker/price?market={MARKET}").json()
    assert one["market"] == MARKET and Decimal(one["price"]) > 0
    books = public(bitvavo_sandbox, "/ticker/book").json()
    assert isinstance(books, list)
    top = public(bitvavo_sandbox, f"/ticker/book?market={MARKET}").json()
    assert Decimal(top["bid"]) < Decimal(top["ask"])
    assert {"bidSize", "askSize"} <= set(top)
    day = public(bitvavo_sandbox, f"/ticker/24h?market={MARKET}").json()
    assert {"market", "open", "high", "low", "last", "volume", "volumeQuote", "bid", "ask",
            "timestamp"} <= set(day)
    assert Decimal(day["low"]) <= Decimal(day["last"]) <= Decimal(day["high"])
    assert isinstance(public(bitvavo_sandbox, "/ticker/24h").json(), list)
    assert_error(public(bitvavo_sandbox, "/ticker/price?market=btc-eur"), 400, 205)


def test_ticker_book_and_candles_share_the_price_path(bitvavo_sandbox: SandboxServer) -> None:
    def price_now() -> Decimal:
        return Decimal(public(bitvavo_sandbox, f"/ticker/price?market={MARKET}").json()["price"])

    for _ in range(3):  # retry if a minute boundary falls between the calls
        price = price_now()
        close = Decimal(public(bitvavo_sandbox,
                               f"/{MARKET}/candles?interval=1m&limit=1").json()[0][4])
        top = public(bitvavo_sandbox, f"/ticker/book?market={MARKET}").json()
        if price == close == price_now():
            break
    assert price == close
    assert Decimal(top["bid"]) < price < Decimal(top["ask"])


def test_unknown_paths_answer_404_html(bitvavo_sandbox: SandboxServer) -> None:
    for path in ("/v2/nothing", "/v3/time", "/"):
        response = httpx.get(bitvavo_sandbox.root + path, timeout=5)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")


def test_every_answer_carries_rate_limit_headers(bitvavo_sandbox: SandboxServer,
                                                 trade: Signer) -> None:
    first = public(bitvavo_sandbox, "/time")
    second = public(bitvavo_sandbox, "/time")
    for response in (first, second, trade.get("/balance"), trade.order(amountQuote="1")):
        assert response.headers["bitvavo-ratelimit-limit"] == "1000"
        reset_at = int(response.headers["bitvavo-ratelimit-resetat"])
        assert reset_at % 60_000 == 0 and reset_at > time.time() * 1000
    remaining = [int(r.headers["bitvavo-ratelimit-remaining"]) for r in (first, second)]
    assert remaining[1] == remaining[0] - 1 or remaining[1] == 999  # new minute window


# -- authentication errors -----------------------------------------------------------------


def test_300_without_credentials(bitvavo_sandbox: SandboxServer) -> None:
    assert_error(public(bitvavo_sandbox, "/balance"), 403, 300)


def test_301_key_of_wrong_length(view: Signer) -> None:
    view.key = "short"
    assert_error(view.get("/balance"), 403, 301)


def test_303_window_out_of_range(view: Signer) -> None:
    assert_error(view.get("/balance", window="99"), 403, 303)
    assert_error(view.get("/balance", window="60001"), 403, 303)
    assert view.get("/balance", window="60000").status_code == 200


def test_304_timestamp_outside_window(view: Signer) -> None:
    now = int(time.time() * 1000)
    assert_error(view.get("/balance", timestamp=now - 11_000), 403, 304)
    assert_error(view.get("/balance", timestamp=now - 2_000, window="1000"), 403, 304)
    assert_error(view.get("/balance", timestamp=now + 30_000), 403, 304)
    assert view.get("/balance", timestamp=now - 20_000, window="30000").status_code == 200


def test_305_unknown_key(view: Signer) -> None:
    view.key = "f" * 64
    assert_error(view.get("/balance"), 403, 305)


def test_309_bad_signature(view: Signer, trade: Signer) -> None:
    body = assert_error(view.get("/balance", secret="wrong"), 403, 309)
    assert body["error"] == "The signature is invalid."
    tampered = trade.request("POST", "/order", raw=b'{"market":"ETH-EUR"}',
                             signed_body='{"market":"BTC-EUR"}')
    assert_error(tampered, 403, 309)


def test_310_view_key_cannot_place_cancel_or_read_orders(view: Signer, trade: Signer,
                                                         bitvavo_sandbox: SandboxServer) -> None:
    assert_error(view.order(amountQuote="10"), 403, 310)
    assert bitvavo_sandbox.orders() == []
    placed = trade.order(orderType="limit", amount="0.001", price="10000").json()
    oid = placed["orderId"]
    cancel = view.request("DELETE", f"/order?market={MARKET}&orderId={oid}"
                                    f"&operatorId={OPERATOR_ID}")
    assert_error(cancel, 403, 310)
    assert_error(view.get(f"/order?market={MARKET}&orderId={oid}"), 403, 310)
    assert trade.get(f"/order?market={MARKET}&orderId={oid}").json()["status"] == "new"


# -- order errors --------------------------------------------------------------------------


def test_102_invalid_json(trade: Signer) -> None:
    assert_error(trade.request("POST", "/order", raw=b'{"market": "BTC-EUR",'), 400, 102)


def test_203_operator_id_required(trade: Signer, bitvavo_sandbox: SandboxServer) -> None:
    body = assert_error(trade.order(amountQuote="10", operatorId=None), 400, 203)
    assert body["error"] == "operatorId parameter is required."
    assert bitvavo_sandbox.orders() == []


@pytest.mark.parametrize("bad", ["12", 1.5, True, 2**63])
def test_205_operator_id_must_be_int64(trade: Signer, bad: Any) -> None:
    assert_error(trade.order(amountQuote="10", operatorId=bad), 400, 205)


def test_205_invalid_market_and_client_order_id(trade: Signer) -> None:
    body = assert_error(trade.order(amountQuote="10", market="FOO-EUR"), 400, 205)
    assert body["error"] == "market parameter is invalid."
    body = assert_error(trade.order(amountQuote="10", clientOrderId="my-order-1"), 400, 205)
    assert "clientOrderId parameter is invalid" in body["error"]


def test_market_order_needs_exactly_one_of_amount_and_amount_quote(trade: Signer) -> None:
    assert_error(trade.order(), 400, 203)
    assert_error(trade.order(amount="0.001", amountQuote="10"), 400, 206)
    assert_error(trade.order(orderType="limit", amount="0.001"), 400, 203)
    assert_error(trade.order(orderType="limit", price="80000"), 400, 203)


def test_212_and_217_below_minimum(trade: Signer) -> None:
    assert_error(trade.order(amount="0.00001"), 400, 212)
    body = assert_error(trade.order(amountQuote="4.99"), 400, 217)
    assert body["error"] == "Minimum order size in quote currency is 5 EUR or 0.00006 BTC."
    assert_error(trade.order(orderType="limit", amount="0.0001", price="40000"), 400, 217)


def test_216_insufficient_balance(trade: Signer, bitvavo_sandbox: SandboxServer) -> None:
    body = assert_error(trade.order(amountQuote="10000.01"), 400, 216)
    assert body["error"] == "You do not have sufficient balance to complete this operation."
    assert_error(trade.order(side="sell", amount="0.01"), 400, 216)
    assert bitvavo_sandbox.orders() == []
    assert balances(trade) == {"EUR": (Decimal("10000"), Decimal(0))}


def test_220_client_order_id_unique_among_open_orders(trade: Signer) -> None:
    cid = str(uuid.uuid4())
    first = trade.order(orderType="limit", amount="0.001", price="10000", clientOrderId=cid)
    assert first.status_code == 200
    again = trade.order(orderType="limit", amount="0.001", price="10000", clientOrderId=cid)
    assert_error(again, 400, 220)
    other_market = trade.order(market="ETH-EUR", orderType="limit", amount="1", price="10",
                               clientOrderId=cid)
    assert other_market.status_code == 200
    trade.request("DELETE", f"/order?market={MARKET}&clientOrderId={cid}"
                            f"&operatorId={OPERATOR_ID}")
    reused = trade.order(orderType="limit", amount="0.001", price="10000", clientOrderId=cid)
    assert reused.status_code == 200, reused.text


def test_240_unknown_order(trade: Signer) -> None:
    unknown = str(uuid.uuid4())
    assert_error(trade.get(f"/order?market={MARKET}&orderId={unknown}"), 404, 240)
    assert_error(trade.get(f"/order?market={MARKET}&clientOrderId={unknown}"), 404, 240)
    cancel = trade.request("DELETE", f"/order?market={MARKET}&orderId={unknown}"
                                     f"&operatorId={OPERATOR_ID}")
    assert_error(cancel, 404, 240)


def test_233_cancelling_an_order_that_is_no_longer_open(trade: Signer) -> None:
    filled = trade.order(amountQuote="10").json()
    resting = trade.order(orderType="limit", amount="0.001", price="10000").json()
    cancel = f"/order?market={MARKET}&operatorId={OPERATOR_ID}&orderId="
    assert trade.request("DELETE", cancel + resting["orderId"]).status_code == 200
    for order in (filled, resting):  # filled, then canceled: both exist, neither is open
        body = assert_error(trade.request("DELETE", cancel + order["orderId"]), 400, 233)
        assert "new or partiallyFilled" in body["error"]
    by_client_id = (f"/order?market={MARKET}&operatorId={OPERATOR_ID}"
                    f"&clientOrderId={filled['clientOrderId']}")
    assert_error(trade.request("DELETE", by_client_id), 400, 233)
    assert_error(trade.request("DELETE", cancel + str(uuid.uuid4())), 404, 240)
    assert trade.get(f"/order?market={MARKET}&orderId={filled['orderId']}").json()["status"] \
        == "filled"


def test_cancel_requires_operator_id(trade: Signer) -> None:
    oid = trade.order(orderType="limit", amount="0.001", price="10000").json()["orderId"]
    assert_error(trade.request("DELETE", f"/order?market={MARKET}&orderId={oid}"), 400, 203)


# -- money ---------------------------------------------------------------------------------


def test_market_buy_by_amount_quote_debits_exactly_with_taker_fee(trade: Signer) -> None:
    order = trade.order(amountQuote="100").json()
    assert order["status"] == "filled" and order["operatorId"] == OPERATOR_ID
    filled, quote = Decimal(order["filledAmount"]), Decimal(order["filledAmountQuote"])
    fee = Decimal(order["feePaid"])
    assert order["feeCurrency"] == "EUR"
    assert fee == (quote * FEE_TAKER).quantize(Decimal("0.00000001"), rounding="ROUND_UP")
    assert quote + fee <= Decimal("100")
    assert Decimal(order["amountQuoteRemaining"]) == Decimal("100") - quote - fee
    [fill] = order["fills"]
    assert fill["taker"] is True and Decimal(fill["amount"]) == filled
    assert Decimal(fill["price"]) * filled == quote
    assert balances(trade) == {"BTC": (filled, Decimal(0)),
                               "EUR": (Decimal("10000") - quote - fee, Decimal(0))}


def test_market_sell_credits_quote_minus_fee(trade: Signer) -> None:
    bought = trade.order(amount="0.01").json()
    eur_after_buy = balances(trade)["EUR"][0]
    assert eur_after_buy == Decimal("10000") - Decimal(bought["filledAmountQuote"]) \
        - Decimal(bought["feePaid"])
    sold = trade.order(side="sell", amount="0.01").json()
    assert sold["status"] == "filled"
    proceeds = Decimal(sold["filledAmountQuote"]) - Decimal(sold["feePaid"])
    assert balances(trade) == {"EUR": (eur_after_buy + proceeds, Decimal(0))}
    assert Decimal(sold["fills"][0]["price"]) < Decimal(bought["fills"][0]["price"])  # spread
    rows = trade.get(f"/trades?market={MARKET}").json()
    assert [r["side"] for r in rows] == ["sell", "buy"]
    assert rows[0]["orderId"] == sold["orderId"] and rows[0]["clientOrderId"]


# -- market statuses and maximum sizes ---------------------------------------------------------


def listed(sandbox: SandboxServer, market: str = MARKET) -> dict[str, Any]:
    row: dict[str, Any] = public(sandbox, f"/markets?market={market}").json()
    return row


def test_market_statuses_and_maximum_sizes_are_settable_and_listed(
        bitvavo_sandbox: SandboxServer) -> None:
    assert listed(bitvavo_sandbox)["status"] == "trading"
    row = bitvavo_sandbox.set_market(MARKET, status="halted", maxOrderInQuoteAsset="100")
    assert row == listed(bitvavo_sandbox)
    assert row["status"] == "halted" and row["maxOrderInQuoteAsset"] == "100"
    assert row["maxOrderInBaseAsset"] == "1000000000"
    assert {m["market"]: m["status"] for m in public(bitvavo_sandbox, "/markets").json()}[
        "ETH-EUR"] == "trading"
    with pytest.raises(httpx.HTTPStatusError):
        bitvavo_sandbox.set_market(MARKET, status="closed")
    with pytest.raises(httpx.HTTPStatusError):
        bitvavo_sandbox.set_market("DOGE-EUR", status="halted")
    bitvavo_sandbox.reset()
    assert listed(bitvavo_sandbox)["status"] == "trading"
    assert listed(bitvavo_sandbox)["maxOrderInQuoteAsset"] == "1000000000"


def test_a_halted_market_accepts_orders_and_fills_them_when_it_trades_again(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    """Bitvavo's support article: while halted, orders are placed and cancellable but not
    executed; they execute when the market trades again."""
    bitvavo_sandbox.set_market(MARKET, status="halted")
    waiting = trade.order(amountQuote="100").json()
    assert waiting["status"] == "new" and waiting["filledAmount"] == "0"
    assert Decimal(waiting["onHold"]) == Decimal("100")
    cancelled = trade.order(amountQuote="50").json()
    cancel = trade.request("DELETE", f"/order?market={MARKET}&orderId={cancelled['orderId']}"
                                     f"&operatorId={OPERATOR_ID}")
    assert cancel.status_code == 200, cancel.text
    limit = trade.order(orderType="limit", amount="0.001", price="999999").json()
    assert limit["status"] == "new"  # marketable, but nothing executes while halted
    assert_error(trade.order(orderType="limit", amount="0.001", price="999999",
                             timeInForce="IOC"), 400, 231)
    assert balances(trade)["EUR"][1] == Decimal("100") + Decimal(limit["onHold"])
    reopened_at = bitvavo_sandbox.advance_clock(10 * 60_000)["market_time"]
    still = trade.get(f"/order?market={MARKET}&orderId={waiting['orderId']}").json()
    assert still["status"] == "new"  # ten minutes later, still halted: still waiting
    bitvavo_sandbox.set_market(MARKET, status="trading")
    filled = trade.get(f"/order?market={MARKET}&orderId={waiting['orderId']}").json()
    assert filled["status"] == "filled" and Decimal(filled["filledAmount"]) > 0
    assert filled["fills"][0]["timestamp"] >= reopened_at  # at the price of the reopening
    quote, fee = Decimal(filled["filledAmountQuote"]), Decimal(filled["feePaid"])
    assert quote + fee <= Decimal("100") and Decimal(filled["onHold"]) == 0
    assert trade.get(f"/order?market={MARKET}&orderId={cancelled['orderId']}").json()[
        "status"] == "canceled"


def test_an_order_waiting_on_a_halted_market_expires_if_its_funds_are_gone(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    bitvavo_sandbox.set_market(MARKET, status="halted")
    waiting = trade.order(side="sell", amount="0.001")
    assert_error(waiting, 400, 216)  # nothing to sell: refused as on a trading market
    bitvavo_sandbox.set_account(insufficient_funds="expire")
    accepted = trade.order(side="sell", amount="0.001").json()
    assert accepted["status"] == "expired" and accepted["filledAmount"] == "0"


def test_an_auction_refuses_orders_and_cancellations(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    resting = trade.order(orderType="limit", amount="0.001", price="10000").json()
    bitvavo_sandbox.set_market(MARKET, status="auction")
    assert_error(trade.order(amountQuote="10"), 400, 423)
    assert_error(trade.request("DELETE", f"/order?market={MARKET}&orderId={resting['orderId']}"
                                         f"&operatorId={OPERATOR_ID}"), 400, 423)
    assert trade.order(market="ETH-EUR", amountQuote="10").status_code == 200
    assert [o["orderId"] for o in bitvavo_sandbox.orders()][0] == resting["orderId"]
    assert len(bitvavo_sandbox.orders()) == 2


def test_210_above_the_maximum_order_size(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    bitvavo_sandbox.set_market(MARKET, maxOrderInQuoteAsset="100", maxOrderInBaseAsset="0.001")
    body = assert_error(trade.order(amountQuote="100.01"), 400, 210)
    assert body["error"].startswith("Amount exceeds the maximum allowed amount")
    assert_error(trade.order(amount="0.00101"), 400, 210)
    assert_error(trade.order(orderType="limit", amount="0.001", price="100001"), 400, 210)
    assert trade.order(amountQuote="100").json()["status"] == "filled"
    assert trade.order(amount="0.001").json()["status"] == "filled"
    assert len(bitvavo_sandbox.orders()) == 2


# -- a market order the balance cannot cover, and where the fee is charged --------------------


def test_an_uncovered_market_order_is_216_or_expires_as_configured(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    bitvavo_sandbox.reset(balances={"EUR": "20"})
    assert_error(trade.order(amountQuote="50"), 400, 216)  # the default: refused
    assert bitvavo_sandbox.set_account(insufficient_funds="expire") == {
        "insufficient_funds": "expire", "amount_quote_fee": "included"}
    expired = trade.order(amountQuote="50").json()  # Bitvavo's create-order page: may expire
    assert expired["status"] == "expired" and expired["filledAmount"] == "0"
    assert expired["fills"] == [] and expired["feePaid"] == "0"
    assert trade.get(f"/order?market={MARKET}&orderId={expired['orderId']}").json()[
        "status"] == "expired"
    assert balances(trade) == {"EUR": (Decimal("20"), Decimal(0))}
    assert trade.order(amountQuote="20").json()["status"] == "filled"  # what it covers fills
    bitvavo_sandbox.reset()
    assert httpx.get(bitvavo_sandbox.root + "/_sandbox/account", timeout=5).json()[
        "insufficient_funds"] == "reject"


def test_the_fee_can_be_charged_on_top_of_amount_quote(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    bitvavo_sandbox.reset(balances={"EUR": "100"})
    bitvavo_sandbox.set_account(amount_quote_fee="on_top")
    assert_error(trade.order(amountQuote="100"), 400, 216)  # 100 plus 0.25 % is more than 100
    order = trade.order(amountQuote="99.75").json()  # 100 / 1.0025, rounded down
    quote, fee = Decimal(order["filledAmountQuote"]), Decimal(order["feePaid"])
    assert order["status"] == "filled" and quote <= Decimal("99.75") < quote + fee
    assert balances(trade)["EUR"] == (Decimal("100") - quote - fee, Decimal(0))
    with pytest.raises(httpx.HTTPStatusError):
        bitvavo_sandbox.set_account(amount_quote_fee="sometimes")


def test_start_values_of_statuses_and_account_rules_come_from_the_environment() -> None:
    env = {"SANDBOX_MARKETS": json.dumps({"ETH-EUR": {"status": "auction",
                                                      "maxOrderInBaseAsset": "2"}}),
           "SANDBOX_INSUFFICIENT_FUNDS": "expire", "SANDBOX_AMOUNT_QUOTE_FEE": "on_top"}
    with start_sandbox(env=env) as sandbox:
        for _ in range(2):  # at start, and after a reset
            row = listed(sandbox, "ETH-EUR")
            assert (row["status"], row["maxOrderInBaseAsset"]) == ("auction", "2")
            assert listed(sandbox)["status"] == "trading"
            assert httpx.get(sandbox.root + "/_sandbox/account", timeout=5).json() == {
                "insufficient_funds": "expire", "amount_quote_fee": "on_top"}
            sandbox.set_market("ETH-EUR", status="trading")
            sandbox.set_account(insufficient_funds="reject")
            sandbox.reset()
    with pytest.raises(RuntimeError, match="SANDBOX_MARKETS"):
        with start_sandbox(env={"SANDBOX_MARKETS": '{"ETH-EUR": {"status": "closed"}}'}):
            pass


def test_resting_limit_order_holds_funds_and_cancel_releases_them(trade: Signer) -> None:
    cid = str(uuid.uuid4())
    order = trade.order(orderType="limit", amount="0.01", price="20000", clientOrderId=cid)
    body = order.json()
    assert body["status"] == "new" and body["onHoldCurrency"] == "EUR"
    hold = Decimal(body["onHold"])
    assert hold == Decimal("200") * (1 + FEE_TAKER)
    assert balances(trade)["EUR"] == (Decimal("10000") - hold, hold)
    assert [o["orderId"] for o in trade.get("/ordersOpen").json()] == [body["orderId"]]
    cancel = trade.request("DELETE", f"/order?market={MARKET}&clientOrderId={cid}"
                                     f"&operatorId={OPERATOR_ID}")
    assert cancel.status_code == 200
    assert cancel.json() == {"orderId": body["orderId"], "clientOrderId": cid,
                             "operatorId": OPERATOR_ID}
    assert balances(trade) == {"EUR": (Decimal("10000"), Decimal(0))}
    assert trade.get(f"/order?market={MARKET}&orderId={body['orderId']}").json()["status"] \
        == "canceled"
    assert trade.get("/ordersOpen").json() == []


def test_limit_order_rests_then_fills_when_the_price_path_crosses(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    # Start one second into a fresh minute so no boundary passes during the test.
    now = bitvavo_sandbox.clock()["market_time"]
    bitvavo_sandbox.advance_clock(60_000 - now % 60_000 + 1_000)
    now = bitvavo_sandbox.clock()["market_time"]
    top = public(bitvavo_sandbox, f"/ticker/book?market={MARKET}").json()
    bid = Decimal(top["bid"])
    for ahead in range(1, 24 * 60):  # the first later minute whose low dips below the bid
        candle = bitvavo_sandbox.price_at(MARKET, now + ahead * 60_000)["candle"]
        if Decimal(candle[3]) < bid - 1:
            limit, crossing_minute = Decimal(candle[3]), candle[0]
            break
    else:
        pytest.fail("the price path never fell below the bid within a day")

    order = trade.order(orderType="limit", amount="0.001", price=str(limit)).json()
    assert order["status"] == "new"
    lookup = f"/order?market={MARKET}&orderId={order['orderId']}"

    def advance_to(market_ms: int) -> None:  # measured now: the search above takes real time
        bitvavo_sandbox.advance_clock(market_ms - bitvavo_sandbox.clock()["market_time"])

    advance_to(crossing_minute - 30_000)  # half a minute before the crossing minute
    assert trade.get(lookup).json()["status"] == "new"
    advance_to(crossing_minute + 1_000)  # into the crossing minute
    filled = trade.get(lookup).json()
    assert filled["status"] == "filled"
    [fill] = filled["fills"]
    assert Decimal(fill["price"]) == limit and fill["taker"] is False
    quote = limit * Decimal("0.001")
    fee = (quote * FEE_MAKER).quantize(Decimal("0.00000001"), rounding="ROUND_UP")
    assert Decimal(filled["feePaid"]) == fee and Decimal(filled["onHold"]) == 0
    assert balances(trade) == {"BTC": (Decimal("0.001"), Decimal(0)),
                               "EUR": (Decimal("10000") - quote - fee, Decimal(0))}


def test_marketable_limit_order_fills_at_once_as_taker(trade: Signer) -> None:
    order = trade.order(orderType="limit", amount="0.001", price="200000").json()
    assert order["status"] == "filled" and order["fills"][0]["taker"] is True
    assert Decimal(order["fills"][0]["price"]) < Decimal("200000")
    post_only = trade.order(orderType="limit", amount="0.001", price="200000", postOnly=True)
    assert post_only.json()["status"] == "canceledPostOnly"
    assert balances(trade)["EUR"][1] == 0


def test_lookup_by_client_order_id_wins_over_order_id(trade: Signer) -> None:
    first = trade.order(amountQuote="10").json()
    second = trade.order(amountQuote="10").json()
    both = trade.get(f"/order?market={MARKET}&orderId={first['orderId']}"
                     f"&clientOrderId={second['clientOrderId']}").json()
    assert both["orderId"] == second["orderId"]
    history = trade.get(f"/orders?market={MARKET}").json()
    assert [o["orderId"] for o in history] == [second["orderId"], first["orderId"]]


def test_balance_symbol_filter(trade: Signer) -> None:
    trade.order(amountQuote="10")
    rows = trade.get("/balance?symbol=BTC").json()
    assert [row["symbol"] for row in rows] == ["BTC"]
    account = trade.get("/account").json()
    assert account["fees"]["taker"] == "0.0025" and account["fees"]["maker"] == "0.0015"


# -- faults --------------------------------------------------------------------------------


def test_error_fault_answers_without_placing(bitvavo_sandbox: SandboxServer,
                                             trade: Signer) -> None:
    bitvavo_sandbox.set_fault(fault="error", times=2, http_status=503, error_code=107)
    assert_error(trade.order(amountQuote="10"), 503, 107)
    assert_error(trade.order(amountQuote="10"), 503, 107)
    assert bitvavo_sandbox.orders() == []
    assert trade.order(amountQuote="10").status_code == 200
    assert len(bitvavo_sandbox.orders()) == 1
    assert balances(trade)["EUR"][0] < Decimal("10000")


def test_error_fault_can_place_and_still_fail(bitvavo_sandbox: SandboxServer,
                                              trade: Signer) -> None:
    bitvavo_sandbox.set_fault(fault="error", times=1, http_status=500, error_code=101,
                              place=True)
    cid = str(uuid.uuid4())
    assert_error(trade.order(amountQuote="10", clientOrderId=cid), 500, 101)
    [order] = bitvavo_sandbox.orders()
    assert order["clientOrderId"] == cid and order["status"] == "filled"


def test_html_502_fault(bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    bitvavo_sandbox.set_fault(fault="error", times=1, http_status=502, error_code=None)
    response = trade.order(amountQuote="10")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert bitvavo_sandbox.orders() == []


def test_latency_fault_delays_then_places(bitvavo_sandbox: SandboxServer,
                                          trade: Signer) -> None:
    bitvavo_sandbox.set_fault(fault="latency", times=1, latency_ms=300)
    started = time.monotonic()
    assert trade.order(amountQuote="10").status_code == 200
    assert time.monotonic() - started >= 0.3
    slow_client = Signer(bitvavo_sandbox, bitvavo_sandbox.trade_key, bitvavo_sandbox.trade_secret)
    slow_client.http = httpx.Client(timeout=0.1)
    bitvavo_sandbox.set_fault(fault="latency", times=1, latency_ms=300)
    with pytest.raises(httpx.ReadTimeout):
        slow_client.order(amountQuote="10")
    deadline = time.monotonic() + 3
    while len(bitvavo_sandbox.orders()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(bitvavo_sandbox.orders()) == 2  # the timed-out order was placed all the same


def test_a_held_latency_fault_places_the_order_only_when_released(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    """A request received inside its window that the exchange executes late, ended by the test
    rather than by a wall-clock wait."""
    described = bitvavo_sandbox.set_fault(fault="latency", latency_ms=60_000, hold=True)
    assert described["hold"] is True
    cid = str(uuid.uuid4())
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(trade.order, amountQuote="10", clientOrderId=cid)
        deadline = time.monotonic() + 5
        while bitvavo_sandbox.held() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bitvavo_sandbox.held() == 1
        assert bitvavo_sandbox.orders() == []  # authenticated, not yet placed
        assert bitvavo_sandbox.release_held() == 1
        response = pending.result(timeout=10)
    assert response.status_code == 200 and response.json()["clientOrderId"] == cid
    assert [o["clientOrderId"] for o in bitvavo_sandbox.orders()] == [cid]
    assert bitvavo_sandbox.held() == 0 and bitvavo_sandbox.release_held() == 0


def test_a_reset_releases_held_requests(bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    bitvavo_sandbox.set_fault(fault="latency", latency_ms=60_000, hold=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(trade.order, amountQuote="10")
        deadline = time.monotonic() + 5
        while bitvavo_sandbox.held() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        bitvavo_sandbox.reset()
        assert pending.result(timeout=10).status_code == 200
    assert bitvavo_sandbox.held() == 0


def test_completed_orders_can_be_hidden_from_client_order_id_lookups(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    filled = trade.order(amountQuote="10").json()
    resting = trade.order(orderType="limit", amount="0.01", price="20000").json()
    assert resting["status"] == "new"
    bitvavo_sandbox.find_completed_by_client_order_id(False)
    by_cid = f"/order?market={MARKET}&clientOrderId="
    assert_error(trade.get(by_cid + filled["clientOrderId"]), 404, 240)
    assert trade.get(by_cid + resting["clientOrderId"]).json()["orderId"] == resting["orderId"]
    # by orderId, in the order history and in the fills it is still there, with its clientOrderId
    assert trade.get(f"/order?market={MARKET}&orderId={filled['orderId']}").status_code == 200
    history = trade.get(f"/orders?market={MARKET}&start={filled['created']}"
                        f"&end={filled['created']}").json()
    assert filled["clientOrderId"] in [o["clientOrderId"] for o in history]
    fills = trade.get(f"/trades?market={MARKET}").json()
    assert [(f["orderId"], f["clientOrderId"]) for f in fills] == \
        [(filled["orderId"], filled["clientOrderId"])]
    bitvavo_sandbox.reset()
    again = trade.order(amountQuote="10").json()
    assert trade.get(by_cid + again["clientOrderId"]).status_code == 200  # reset: found again


def test_order_history_and_fills_honour_start_end_and_limit(
        bitvavo_sandbox: SandboxServer, trade: Signer) -> None:
    first = trade.order(amountQuote="10").json()
    bitvavo_sandbox.advance_clock(60_000)
    second = trade.order(amountQuote="10").json()
    newest_first = [o["orderId"] for o in trade.get(f"/orders?market={MARKET}").json()]
    assert newest_first == [second["orderId"], first["orderId"]]
    assert [o["orderId"] for o in trade.get(
        f"/orders?market={MARKET}&end={second['created'] - 1}").json()] == [first["orderId"]]
    assert [o["orderId"] for o in trade.get(
        f"/orders?market={MARKET}&start={first['created'] + 1}").json()] == [second["orderId"]]
    assert len(trade.get(f"/orders?market={MARKET}&limit=1").json()) == 1
    assert [f["orderId"] for f in trade.get(
        f"/trades?market={MARKET}&start={first['created'] + 1}").json()] == [second["orderId"]]
    assert_error(trade.get(f"/orders?market={MARKET}&limit=1001"), 400, 205)


def test_drop_after_accept_places_exactly_one_order(bitvavo_sandbox: SandboxServer,
                                                    trade: Signer) -> None:
    bitvavo_sandbox.set_fault(fault="drop_after_accept", times=1)
    cid = str(uuid.uuid4())
    with pytest.raises(httpx.RemoteProtocolError):
        trade.order(amountQuote="25", clientOrderId=cid)
    accepted = bitvavo_sandbox.orders()
    assert [o["clientOrderId"] for o in accepted] == [cid]
    fetched = trade.get(f"/order?market={MARKET}&clientOrderId={cid}").json()
    assert fetched["status"] == "filled" and fetched["orderId"] == accepted[0]["orderId"]
    assert balances(trade)["EUR"][0] < Decimal("10000")
    assert trade.order(amountQuote="10").status_code == 200  # fault used up
    assert bitvavo_sandbox.set_fault(fault="none") == {"fault": "none", "remaining": 0}


@pytest.mark.parametrize(
    ("status", "fraction", "side", "by"),
    [
        ("expired", "0", "buy", {"amountQuote": "100"}),
        ("canceledMarketProtection", "0", "buy", {"amount": "0.001"}),
        ("canceledMarketProtection", "0.25", "buy", {"amountQuote": "100"}),
        ("partiallyFilled", "0.5", "buy", {"amount": "0.001"}),
        ("expired", "0.3", "sell", {"amount": "0.001"}),
    ],
)
def test_unfilled_fault_answers_200_and_everything_agrees(
        bitvavo_sandbox: SandboxServer, trade: Signer, status: str, fraction: str, side: str,
        by: dict[str, str]) -> None:
    if side == "sell":
        bitvavo_sandbox.reset(balances={"EUR": "0", "BTC": "0.001"})
    before = balances(trade)
    described = bitvavo_sandbox.set_fault(fault="unfilled", times=1, status=status,
                                          fill_fraction=fraction)
    assert described["status"] == status and described["fill_fraction"] == fraction
    response = trade.order(side=side, **by)
    assert response.status_code == 200, response.text
    order = response.json()
    assert order["status"] == status
    filled = Decimal(order["filledAmount"])
    quote, fee = Decimal(order["filledAmountQuote"]), Decimal(order["feePaid"])
    assert filled == sum((Decimal(f["amount"]) for f in order["fills"]), Decimal(0))
    assert (filled > 0) is (fraction != "0")
    if "amount" in by:
        full = Decimal(by["amount"])
        assert filled == full * Decimal(fraction)
        assert Decimal(order["amountRemaining"]) == full - filled
    else:
        assert Decimal(order["amountQuoteRemaining"]) == Decimal(by["amountQuote"]) - quote - fee
    # the lookup, the account's history and the balances tell the same story
    lookup = f"/order?market={MARKET}&clientOrderId={order['clientOrderId']}"
    assert trade.get(lookup).json() == order
    assert [o["orderId"] for o in bitvavo_sandbox.orders()] == [order["orderId"]]
    assert len(trade.get(f"/trades?market={MARKET}").json()) == len(order["fills"])
    eur, btc = before.get("EUR", (Decimal(0),))[0], before.get("BTC", (Decimal(0),))[0]
    expected = {"EUR": eur - quote - fee, "BTC": btc + filled} if side == "buy" else \
        {"EUR": eur + quote - fee, "BTC": btc - filled}
    assert balances(trade) == {k: (v, Decimal(0)) for k, v in expected.items() if v}
    open_orders = [o["orderId"] for o in trade.get("/ordersOpen").json()]
    assert open_orders == ([order["orderId"]] if status == "partiallyFilled" else [])
    cancel = trade.request("DELETE", f"/order?market={MARKET}&orderId={order['orderId']}"
                                     f"&operatorId={OPERATOR_ID}")
    if status == "partiallyFilled":
        assert cancel.status_code == 200
        assert trade.get(lookup).json()["status"] == "canceled"
        assert balances(trade) == {k: (v, Decimal(0)) for k, v in expected.items() if v}
    else:
        assert_error(cancel, 400, 233)
    assert trade.order(side="buy", amountQuote="10").json()["status"] == "filled"  # used up


def test_unfilled_fault_leaves_a_limit_order_alone(bitvavo_sandbox: SandboxServer,
                                                   trade: Signer) -> None:
    bitvavo_sandbox.set_fault(fault="unfilled", times=1, status="expired")
    crossing = trade.order(orderType="limit", amount="0.001", price="200000").json()
    assert crossing["status"] == "filled"
    assert bitvavo_sandbox.set_fault(fault="none")["remaining"] == 0


@pytest.mark.parametrize(
    "spec",
    [
        {"fault": "explode"},
        {"fault": "unfilled", "status": "filled"},
        {"fault": "unfilled", "status": "partiallyFilled"},  # a partial fill needs a fill
        {"fault": "unfilled", "fill_fraction": "1"},
        {"fault": "unfilled", "fill_fraction": "-0.1"},
        {"fault": "unfilled", "fill_fraction": 0.5},  # a float: money is never float
        {"fault": "unfilled", "fill_fraction": "half"},
        {"fault": "error", "hold": True},  # only a latency holds
        {"fault": "latency", "hold": "yes"},
    ],
)
def test_fault_control_rejects_nonsense(bitvavo_sandbox: SandboxServer,
                                        spec: dict[str, Any]) -> None:
    response = httpx.post(bitvavo_sandbox.root + "/_sandbox/faults", json=spec, timeout=5)
    assert response.status_code == 400
    assert bitvavo_sandbox.set_fault(fault="none")["fault"] == "none"


def test_reset_restores_the_starting_state(bitvavo_sandbox: SandboxServer,
                                           trade: Signer) -> None:
    trade.order(amountQuote="10")
    bitvavo_sandbox.set_fault(fault="error", times=5)
    bitvavo_sandbox.advance_clock(3_600_000)
    bitvavo_sandbox.reset()
    assert bitvavo_sandbox.orders() == []
    assert bitvavo_sandbox.clock()["offset_ms"] == 0
    assert balances(trade) == {"EUR": (Decimal("10000"), Decimal(0))}
    assert trade.order(amountQuote="10").status_code == 200
    bitvavo_sandbox.reset(balances={"EUR": "50", "ETH": "1"})
    assert balances(trade) == {"ETH": (Decimal(1), Decimal(0)), "EUR": (Decimal(50), Decimal(0))}


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_same_prices(bitvavo_sandbox: SandboxServer) -> None:
    end = (int(time.time() * 1000) // 60_000 - 2) * 60_000
    query = f"/{MARKET}/candles?interval=1m&limit=30&end={end}"
    with start_sandbox(seed=42) as twin, start_sandbox(seed=7) as other:
        assert public(twin, query).json() == public(bitvavo_sandbox, query).json()
        assert public(other, query).json() != public(bitvavo_sandbox, query).json()
        for at in (0, 1_700_000_000_000, end):
            assert twin.price_at("ETH-EUR", at) == bitvavo_sandbox.price_at("ETH-EUR", at)
        for _ in range(3):  # same minute → same ticker
            a = public(twin, "/ticker/price").json()
            b = public(bitvavo_sandbox, "/ticker/price").json()
            if a == b:
                break
        assert a == b


# -- custom keys, balances and a tight rate limit ------------------------------------------

TRADE_ONLY_KEY = "1" * 64
LIMITED_KEY = "2" * 64


@pytest.fixture(scope="module")
def tight_sandbox() -> Iterator[SandboxServer]:
    keys = [
        {"key": TRADE_ONLY_KEY, "secret": "trade-only-secret", "permissions": ["trade"]},
        {"key": LIMITED_KEY, "secret": "limited-secret", "permissions": ["view", "trade"]},
    ]
    env = {"SANDBOX_KEYS": json.dumps(keys), "SANDBOX_RATE_LIMIT": "10",
           "SANDBOX_BALANCES": json.dumps({"EUR": "100", "BTC": "0.5"})}
    with start_sandbox(env=env) as server:
        yield server


@pytest.fixture
def tight(tight_sandbox: SandboxServer) -> SandboxServer:
    tight_sandbox.reset()
    return tight_sandbox


def test_custom_keys_and_balances(tight: SandboxServer) -> None:
    limited = Signer(tight, LIMITED_KEY, "limited-secret")
    assert balances(limited) == {"BTC": (Decimal("0.5"), Decimal(0)),
                                 "EUR": (Decimal("100"), Decimal(0))}
    default_key = Signer(tight, tight.view_key, tight.view_secret)
    assert_error(default_key.get("/balance"), 403, 305)


def test_311_key_without_view_cannot_read_balance(tight: SandboxServer) -> None:
    trade_only = Signer(tight, TRADE_ONLY_KEY, "trade-only-secret")
    body = assert_error(trade_only.get("/balance"), 403, 311)
    assert body["error"] == "This key does not allow showing account information."
    assert trade_only.order(amountQuote="10").status_code == 200


def start_of_a_window(sandbox: SandboxServer) -> int:
    """Move the market clock (which the rate-limit windows follow) just past a minute boundary,
    so a test has a whole window to itself; returns that window's end (ms)."""
    now = sandbox.clock()["market_time"]
    sandbox.advance_clock(60_000 - now % 60_000 + 100)
    return int(now - now % 60_000 + 120_000)


def ban_expiry(body: dict[str, Any]) -> int:
    assert body["error"].startswith("Your IP or API key has been banned for not respecting the "
                                    "rate limit. The ban expires at "), body
    return int(body["error"].split(" at ")[1].rstrip("."))


def test_110_key_ban_lasts_until_its_window_ends_plus_a_minute(tight: SandboxServer) -> None:
    """Bitvavo's rate-limit page: HTTP 429, errorCode 110; over the limit at 12:00:15, allowed
    again at 12:02:00 (the rest of the window, then one more minute)."""
    window_end = start_of_a_window(tight)
    limited = Signer(tight, LIMITED_KEY, "limited-secret")
    spent = [limited.get("/balance") for _ in range(2)]  # weight 5 each: the whole budget
    assert [r.status_code for r in spent] == [200, 200]
    assert spent[1].headers["bitvavo-ratelimit-remaining"] == "0"
    assert int(spent[1].headers["bitvavo-ratelimit-resetat"]) == window_end
    banned = limited.get("/balance")
    assert ban_expiry(assert_error(banned, 429, 110)) == window_end + 60_000
    assert banned.headers["bitvavo-ratelimit-remaining"] == "0"
    assert_error(limited.get("/account"), 429, 110)  # still banned, any endpoint
    assert public(tight, "/time").status_code == 200  # the IP's budget is its own
    tight.advance_clock(60_000)  # the next window: still banned
    assert_error(limited.get("/account"), 429, 110)
    tight.advance_clock(60_000)  # a minute after the window's end
    assert limited.get("/account").status_code == 200


def test_110_ip_ban_lasts_15_minutes_and_leaves_keys_alone(tight: SandboxServer) -> None:
    start_of_a_window(tight)
    answers = [public(tight, "/time") for _ in range(12)]
    statuses = [a.status_code for a in answers]
    assert statuses[:10] == [200] * 10 and statuses[10:] == [429, 429]
    banned_at = tight.clock()["market_time"]
    expires = ban_expiry(assert_error(answers[10], 429, 110))
    assert 15 * 60_000 - 5_000 < expires - banned_at <= 15 * 60_000
    assert_error(public(tight, "/markets"), 429, 110)
    limited = Signer(tight, LIMITED_KEY, "limited-secret")
    assert limited.get("/account").status_code == 200  # signed: the key's budget, not the IP's
    tight.advance_clock(14 * 60_000)
    assert_error(public(tight, "/time"), 429, 110)
    tight.advance_clock(60_000)
    assert public(tight, "/time").status_code == 200


def test_rate_limit_windows_follow_the_market_clock(tight: SandboxServer) -> None:
    window_end = start_of_a_window(tight)
    limited = Signer(tight, LIMITED_KEY, "limited-secret")
    spent = [limited.get("/balance") for _ in range(2)]
    assert spent[1].headers["bitvavo-ratelimit-remaining"] == "0"
    tight.advance_clock(60_000)  # a minute passes on the sandbox's clock, none on the wall's
    fresh = limited.get("/balance")
    assert fresh.status_code == 200, fresh.text
    assert fresh.headers["bitvavo-ratelimit-remaining"] == "5"
    assert int(fresh.headers["bitvavo-ratelimit-resetat"]) == window_end + 60_000


def test_the_ban_code_can_be_the_105_the_sdks_know() -> None:
    with start_sandbox(env={"SANDBOX_RATE_LIMIT": "1",
                            "SANDBOX_RATE_LIMIT_ERROR_CODE": "105"}) as sandbox:
        start_of_a_window(sandbox)
        assert public(sandbox, "/time").status_code == 200
        ban_expiry(assert_error(public(sandbox, "/time"), 429, 105))


def test_rate_limit_counts_endpoint_weights(tight: SandboxServer) -> None:
    limited = Signer(tight, LIMITED_KEY, "limited-secret")
    for _ in range(3):
        before = int(limited.get("/account").headers["bitvavo-ratelimit-remaining"])
        after = int(limited.get("/balance").headers["bitvavo-ratelimit-remaining"])
        if before - after == 5:
            return
        tight.reset()
    pytest.fail("GET /balance should weigh 5 points")


def test_control_surface_answers_loopback(bitvavo_sandbox: SandboxServer) -> None:
    assert httpx.get(bitvavo_sandbox.root + "/_sandbox/faults", timeout=5).json()["fault"] \
        == "none"


def test_hmac_helper_is_plain_sha256() -> None:
    expected = hmac.new(b"k", b"1GET/v2/time", hashlib.sha256).hexdigest()
    assert sign("k", 1, "GET", "/time") == expected


def test_cancel_all_orders_releases_every_hold(trade: Signer) -> None:
    first = trade.order(orderType="limit", amount="0.001", price="10000").json()
    second = trade.order(market="ETH-EUR", orderType="limit", amount="1", price="10").json()
    assert_error(trade.request("DELETE", "/orders?market=BTC-EUR"), 400, 203)
    answer = trade.request("DELETE", f"/orders?operatorId={OPERATOR_ID}").json()
    assert {row["orderId"] for row in answer} == {first["orderId"], second["orderId"]}
    assert balances(trade) == {"EUR": (Decimal("10000"), Decimal(0))}
    fees = trade.get("/account/fees?market=BTC-EUR").json()
    assert fees["taker"] == "0.0025"


def test_request_log_names_requests_but_never_credentials(bitvavo_sandbox: SandboxServer,
                                                          trade: Signer) -> None:
    trade.order(amountQuote="10")
    trade.get("/balance", secret="wrong")
    log = bitvavo_sandbox.log()
    assert "POST /v2/order 200" in log and "GET /v2/balance 403" in log
    assert bitvavo_sandbox.trade_secret not in log
    assert bitvavo_sandbox.trade_key not in log
    assert "signature" not in log.lower()


def test_control_surface_refuses_non_loopback_peers() -> None:
    """The real request path with the peer address the server records replaced by a
    non-loopback one (a documentation address; all traffic stays on 127.0.0.1)."""
    class SeenFromAfar(bitvavo.SandboxServer):
        def get_request(self) -> tuple[socket.socket, Any]:
            conn, (_, port) = super().get_request()
            return conn, ("203.0.113.7", port)

    server = bitvavo.make_server("127.0.0.1", 0, 42, env={})
    server.socket.close()
    afar = SeenFromAfar(("127.0.0.1", 0), server.RequestHandlerClass)
    thread = threading.Thread(target=afar.serve_forever, daemon=True)
    thread.start()
    try:
        root = f"http://127.0.0.1:{afar.server_address[1]}"
        assert httpx.get(root + "/v2/time", timeout=5).status_code == 200
        for method, path in (("GET", "/_sandbox/orders"), ("POST", "/_sandbox/reset"),
                             ("POST", "/_sandbox/faults")):
            response = httpx.request(method, root + path, json={"fault": "error"}, timeout=5)
            assert response.status_code == 403, (method, path)
    finally:
        afar.shutdown()
        afar.server_close()


def test_loopback_detection() -> None:
    from sandbox.bitvavo import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("127.8.9.10")
    assert not _is_loopback("10.0.0.5") and not _is_loopback("192.168.1.2")
    assert not _is_loopback("not-an-ip")


@pytest.mark.parametrize("length", ["abc", "-5", str(10 * 1024 * 1024)])
def test_unreadable_content_length_is_a_400_not_a_500(
        bitvavo_sandbox: SandboxServer, length: str) -> None:
    with socket.create_connection(("127.0.0.1", int(bitvavo_sandbox.root.rsplit(":", 1)[1])),
                                  timeout=5) as conn:
        conn.sendall(f"POST /v2/order HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                     "Content-Type: application/json\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(4096):  # the sandbox closes the connection after answering
            chunks.append(chunk)
        head = b"".join(chunks).decode(errors="replace")
    assert head.startswith("HTTP/1.0 400") or head.startswith("HTTP/1.1 400"), head
    assert '"errorCode": 102' in head or '"errorCode":102' in head, head
