"""Clients nobody here wrote, unmodified, against the sandbox: the official python-bitvavo-api
SDK (1.4.3) and ccxt's bitvavo class (4.5.90). If they work here, the sandbox speaks enough
Bitvavo; if they break, the sandbox drifted from the real exchange (not the other way round).

What each client sends (read from their source):
- SDK: lower-case headers, signs public calls too, sends `json=body` (spaces after `:`/`,`)
  but signs compact JSON, sends `{}` on GET/DELETE and signs no body, query not URL-encoded.
  It returns Bitvavo's error dict instead of raising. Its default timeout is None: always pass
  `timeout`.
- ccxt: upper-case headers, never signs public calls, compact JSON via orjson, URL-encoded
  query; `load_markets` calls /assets and /markets; `fetch_ticker` uses /ticker/24h?market=;
  maps errorCode to exception classes (its `exceptions['exact']`) with the body in the message.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest
from python_bitvavo_api.bitvavo import Bitvavo, createPostfix

from tests.sandbox_server import SandboxServer, start_sandbox

OPERATOR_ID = 987654321
TIMEOUT_S = 5


def sdk(sandbox: SandboxServer, key: str, secret: str) -> Bitvavo:
    return Bitvavo({"APIKEY": key, "APISECRET": secret, "RESTURL": sandbox.rest_url,
                    "TIMEOUT": TIMEOUT_S})


def sdk_order_by_client_id(client: Bitvavo, market: str, client_order_id: str) -> Any:
    """The SDK's getOrder() only takes an orderId; its own request helper does the rest."""
    postfix = createPostfix({"market": market, "clientOrderId": client_order_id})
    return client.privateRequest("/order", postfix, {}, "GET")


def exchange(sandbox: SandboxServer, key: str, secret: str, **options: Any) -> ccxt.bitvavo:
    return ccxt.bitvavo({
        "apiKey": key,
        "secret": secret,
        "urls": {"api": {"public": sandbox.root, "private": sandbox.root}},
        "options": {"operatorId": OPERATOR_ID, **options},
        "timeout": TIMEOUT_S * 1000,
        "enableRateLimit": False,
    })


# -- official SDK --------------------------------------------------------------------------


@pytest.fixture
def sdk_trade(bitvavo_sandbox: SandboxServer) -> Bitvavo:
    return sdk(bitvavo_sandbox, bitvavo_sandbox.trade_key, bitvavo_sandbox.trade_secret)


def test_sdk_market_data(sdk_trade: Bitvavo) -> None:
    assert abs(sdk_trade.time()["time"] - time.time() * 1000) < 5_000
    markets = sdk_trade.markets()
    assert {"BTC-EUR", "ETH-EUR"} <= {m["market"] for m in markets}
    assert {"EUR", "BTC"} <= {a["symbol"] for a in sdk_trade.assets()}
    price = sdk_trade.tickerPrice({"market": "BTC-EUR"})
    assert price["market"] == "BTC-EUR" and Decimal(price["price"]) > 0
    assert len(sdk_trade.tickerBook()) == len(markets)
    assert sdk_trade.ticker24h({"market": "ETH-EUR"})["market"] == "ETH-EUR"
    book = sdk_trade.book("BTC-EUR", {"depth": 5})
    assert len(book["bids"]) == 5
    candles = sdk_trade.candles("BTC-EUR", "1m", {}, limit=5)
    assert len(candles) == 5 and candles[0][0] > candles[-1][0]
    assert len(sdk_trade.publicTrades("BTC-EUR", {"limit": 3})) == 3
    assert sdk_trade.getRemainingLimit() < 1000  # it read bitvavo-ratelimit-remaining


def test_sdk_balance_order_and_lookup(bitvavo_sandbox: SandboxServer, sdk_trade: Bitvavo) -> None:
    assert sdk_trade.balance({}) == [{"symbol": "EUR", "available": "10000", "inOrder": "0"}]
    cid = str(uuid.uuid4())
    order = sdk_trade.placeOrder("BTC-EUR", "buy", "market",
                                 {"amountQuote": "20", "operatorId": OPERATOR_ID,
                                  "clientOrderId": cid})
    assert order["status"] == "filled" and order["clientOrderId"] == cid
    fetched = sdk_order_by_client_id(sdk_trade, "BTC-EUR", cid)
    assert fetched["orderId"] == order["orderId"] and fetched["status"] == "filled"
    assert sdk_trade.getOrder("BTC-EUR", order["orderId"])["clientOrderId"] == cid
    [btc] = sdk_trade.balance({"symbol": "BTC"})
    assert Decimal(btc["available"]) == Decimal(order["filledAmount"])
    assert [t["orderId"] for t in sdk_trade.trades("BTC-EUR", {})] == [order["orderId"]]
    assert [o["clientOrderId"] for o in bitvavo_sandbox.orders()] == [cid]


def test_sdk_limit_order_and_cancel(sdk_trade: Bitvavo) -> None:
    order = sdk_trade.placeOrder("ETH-EUR", "buy", "limit",
                                 {"amount": "0.1", "price": "100", "operatorId": OPERATOR_ID})
    assert order["status"] == "new"
    assert [o["orderId"] for o in sdk_trade.ordersOpen({"market": "ETH-EUR"})] \
        == [order["orderId"]]
    canceled = sdk_trade.cancelOrder("ETH-EUR", order["orderId"], operatorId=OPERATOR_ID)
    assert canceled == {"orderId": order["orderId"], "operatorId": OPERATOR_ID}
    assert sdk_trade.ordersOpen({}) == []
    assert sdk_trade.cancelOrder("ETH-EUR", order["orderId"])["errorCode"] == 203
    again = sdk_trade.cancelOrder("ETH-EUR", order["orderId"], operatorId=OPERATOR_ID)
    assert again["errorCode"] == 233  # canceled already: exists, but no longer open


def test_sdk_gets_bitvavo_error_codes(bitvavo_sandbox: SandboxServer, sdk_trade: Bitvavo) -> None:
    missing = sdk_trade.placeOrder("BTC-EUR", "buy", "market", {"amountQuote": "10"})
    assert missing == {"errorCode": 203, "error": "operatorId parameter is required."}
    too_small = sdk_trade.placeOrder("BTC-EUR", "buy", "market",
                                     {"amountQuote": "1", "operatorId": OPERATOR_ID})
    assert too_small["errorCode"] == 217
    wrong_secret = sdk(bitvavo_sandbox, bitvavo_sandbox.trade_key, "not-the-secret")
    assert wrong_secret.balance({}) == {"errorCode": 309, "error": "The signature is invalid."}
    assert wrong_secret.placeOrder("BTC-EUR", "buy", "market",
                                   {"amountQuote": "10", "operatorId": 1})["errorCode"] == 309
    view_only = sdk(bitvavo_sandbox, bitvavo_sandbox.view_key, bitvavo_sandbox.view_secret)
    assert view_only.placeOrder("BTC-EUR", "buy", "market",
                                {"amountQuote": "10", "operatorId": 1})["errorCode"] == 310
    unknown = sdk_trade.getOrder("BTC-EUR", str(uuid.uuid4()))
    assert unknown["errorCode"] == 240
    assert bitvavo_sandbox.orders() == []


# -- ccxt ----------------------------------------------------------------------------------


@pytest.fixture
def cx(bitvavo_sandbox: SandboxServer) -> ccxt.bitvavo:
    client = exchange(bitvavo_sandbox, bitvavo_sandbox.trade_key, bitvavo_sandbox.trade_secret)
    client.load_markets()
    return client


def test_ccxt_load_markets(cx: ccxt.bitvavo) -> None:
    market = cx.market("BTC/EUR")
    assert market["id"] == "BTC-EUR" and market["active"] is True
    assert market["precision"]["price"] == 1.0 and market["precision"]["amount"] == 1e-08
    assert market["limits"]["cost"]["min"] == 5.0
    assert market["limits"]["amount"]["min"] == 0.00006
    assert {"EUR", "BTC", "ETH"} <= set(cx.currencies)


def test_ccxt_ticker_ohlcv_book_balance(bitvavo_sandbox: SandboxServer, cx: ccxt.bitvavo) -> None:
    ticker = cx.fetch_ticker("BTC/EUR")
    assert ticker["symbol"] == "BTC/EUR"
    assert ticker["bid"] < ticker["last"] < ticker["ask"]
    assert ticker["low"] <= ticker["last"] <= ticker["high"]
    assert set(cx.fetch_tickers()) >= {"BTC/EUR", "ETH/EUR"}
    ohlcv = cx.fetch_ohlcv("ETH/EUR", "5m", limit=4)
    assert len(ohlcv) == 4
    assert [row[0] for row in ohlcv] == sorted(row[0] for row in ohlcv)  # ccxt sorts ascending
    assert all(row[0] % 300_000 == 0 for row in ohlcv)
    since = ohlcv[0][0] - 10 * 60_000
    assert cx.fetch_ohlcv("ETH/EUR", "1m", since=since, limit=3)[0][0] == since
    book = cx.fetch_order_book("SOL/EUR", 5)
    assert book["bids"][0][0] < book["asks"][0][0]
    balance = cx.fetch_balance()
    assert balance["EUR"] == {"free": 10000.0, "used": 0.0, "total": 10000.0}


def test_ccxt_market_buy_and_fetch_by_client_order_id(bitvavo_sandbox: SandboxServer,
                                                      cx: ccxt.bitvavo) -> None:
    cid = str(uuid.uuid4())
    order = cx.create_order("BTC/EUR", "market", "buy", 0.0002, None, {"clientOrderId": cid})
    assert order["status"] == "closed" and order["filled"] == 0.0002
    assert order["fee"]["currency"] == "EUR" and order["fee"]["cost"] > 0
    fetched = cx.fetch_order(None, "BTC/EUR", {"clientOrderId": cid})
    assert fetched["id"] == order["id"] and fetched["info"]["clientOrderId"] == cid
    by_cost = cx.create_order("BTC/EUR", "market", "buy", None, None, {"cost": 10})
    assert by_cost["info"]["amountQuote"] == "10" and by_cost["status"] == "closed"
    sent = bitvavo_sandbox.orders()
    assert [o["operatorId"] for o in sent] == [OPERATOR_ID, OPERATOR_ID]
    assert sent[0]["clientOrderId"] == cid
    assert cx.fetch_balance()["BTC"]["free"] > 0.0002
    assert len(cx.fetch_my_trades("BTC/EUR")) == 2


def test_ccxt_limit_order_and_cancel(cx: ccxt.bitvavo) -> None:
    order = cx.create_order("ETH/EUR", "limit", "buy", 0.1, 100)
    assert order["status"] == "open"
    assert [o["id"] for o in cx.fetch_open_orders("ETH/EUR")] == [order["id"]]
    canceled = cx.cancel_order(order["id"], "ETH/EUR")
    assert canceled["id"] == order["id"]
    assert cx.fetch_order(order["id"], "ETH/EUR")["status"] == "canceled"
    # ccxt files 233 under its OrderNotFound (ccxt issue 24154); shared.exchange does not
    with pytest.raises(ccxt.OrderNotFound, match='"errorCode":233'):
        cx.cancel_order(order["id"], "ETH/EUR")


def test_both_clients_read_an_unfilled_market_order(bitvavo_sandbox: SandboxServer,
                                                     sdk_trade: Bitvavo,
                                                     cx: ccxt.bitvavo) -> None:
    bitvavo_sandbox.set_fault(fault="unfilled", times=2, status="canceledMarketProtection",
                              fill_fraction="0.5")
    by_sdk = sdk_trade.placeOrder("BTC-EUR", "buy", "market",
                                  {"amount": "0.0002", "operatorId": OPERATOR_ID})
    assert by_sdk["status"] == "canceledMarketProtection" and by_sdk["filledAmount"] == "0.0001"
    by_ccxt = cx.create_order("BTC/EUR", "market", "buy", 0.0002)
    assert by_ccxt["info"]["status"] == "canceledMarketProtection"
    assert by_ccxt["filled"] == 0.0001 and by_ccxt["remaining"] == 0.0001
    assert cx.fetch_order(by_ccxt["id"], "BTC/EUR")["filled"] == 0.0001


def test_ccxt_maps_bitvavo_error_codes(bitvavo_sandbox: SandboxServer, cx: ccxt.bitvavo) -> None:
    # ccxt refuses to send an order without operatorId ...
    no_operator = exchange(bitvavo_sandbox, bitvavo_sandbox.trade_key,
                           bitvavo_sandbox.trade_secret, operatorId=None)
    with pytest.raises(ccxt.ArgumentsRequired):
        no_operator.create_order("BTC/EUR", "market", "buy", 0.001)
    # ... so send one through its raw endpoint: Bitvavo's 203, which ccxt maps to BadSymbol.
    with pytest.raises(ccxt.BadSymbol, match='"errorCode":203'):
        cx.privatePostOrder({"market": "BTC-EUR", "side": "buy", "orderType": "market",
                             "amountQuote": "10"})
    with pytest.raises(ccxt.InvalidOrder, match='"errorCode":217'):
        cx.create_order("BTC/EUR", "market", "buy", None, None, {"cost": 2})
    with pytest.raises(ccxt.InvalidOrder, match='"errorCode":212'):
        cx.create_order("BTC/EUR", "market", "buy", 0.00001)
    with pytest.raises(ccxt.InsufficientFunds, match='"errorCode":216'):
        cx.create_order("BTC/EUR", "market", "sell", 1)
    with pytest.raises(ccxt.OrderNotFound, match='"errorCode":240'):
        cx.fetch_order(str(uuid.uuid4()), "BTC/EUR")
    wrong_secret = exchange(bitvavo_sandbox, bitvavo_sandbox.trade_key, "not-the-secret")
    with pytest.raises(ccxt.AuthenticationError, match='"errorCode":309'):
        wrong_secret.fetch_balance()
    view_only = exchange(bitvavo_sandbox, bitvavo_sandbox.view_key, bitvavo_sandbox.view_secret)
    view_only.load_markets()
    with pytest.raises(ccxt.PermissionDenied, match='"errorCode":310'):
        view_only.create_order("BTC/EUR", "market", "buy", 0.001)
    assert bitvavo_sandbox.orders() == []


def test_ccxt_sees_a_dropped_answer_as_a_network_error(bitvavo_sandbox: SandboxServer,
                                                       cx: ccxt.bitvavo) -> None:
    bitvavo_sandbox.set_fault(fault="drop_after_accept", times=1)
    cid = str(uuid.uuid4())
    with pytest.raises(ccxt.NetworkError):
        cx.create_order("BTC/EUR", "market", "buy", 0.0002, None, {"clientOrderId": cid})
    assert cx.fetch_order(None, "BTC/EUR", {"clientOrderId": cid})["status"] == "closed"
    assert len(bitvavo_sandbox.orders()) == 1


# -- rate-limit bans, as both clients read them --------------------------------------------

LIMITED_KEY, LIMITED_SECRET = "3" * 64, "limited-conformance-secret"


@pytest.fixture
def tight(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    keys = [{"key": LIMITED_KEY, "secret": LIMITED_SECRET, "permissions": ["view", "trade"]}]
    env = {"SANDBOX_KEYS": json.dumps(keys), "SANDBOX_RATE_LIMIT": "6",
           "SANDBOX_RATE_LIMIT_ERROR_CODE": str(getattr(request, "param", 110))}
    with start_sandbox(env=env) as sb:
        yield sb


@pytest.mark.parametrize("tight", [105], indirect=True)
def test_both_clients_understand_a_105_ban(tight: SandboxServer) -> None:
    client = sdk(tight, LIMITED_KEY, LIMITED_SECRET)
    answers = [client.balance({}) for _ in range(3)]  # weight 5 each against a budget of 6
    banned = [a for a in answers if isinstance(a, dict) and a.get("errorCode") == 105]
    assert banned, answers
    assert client.getRemainingLimit() == 0
    # parsed " at <ms>.": the rest of the key's window, then one more minute
    assert 55_000 < client.rateLimitReset - time.time() * 1000 <= 120_000
    tight.reset()
    cx = exchange(tight, LIMITED_KEY, LIMITED_SECRET)
    cx.load_markets()  # public calls: the IP budget, not the key's
    with pytest.raises(ccxt.RateLimitExceeded, match='"errorCode":105'):
        for _ in range(3):
            cx.fetch_balance()


def test_how_both_clients_read_bitvavos_current_110_ban(tight: SandboxServer) -> None:
    """Bitvavo's rate-limit page now answers 429 with errorCode 110. The official SDK (1.4.3)
    records a ban only for 105: after a 110 it still counts the budget it saw before; ccxt 4.5.90
    maps 110 to BadRequest ("Invalid endpoint"), not to a rate limit. Our client reads 110 under
    HTTP 429 as a ban (tests/test_exchange_ratelimit.py)."""
    client = sdk(tight, LIMITED_KEY, LIMITED_SECRET)
    answers = [client.balance({}) for _ in range(3)]
    assert [a for a in answers if isinstance(a, dict) and a.get("errorCode") == 110], answers
    assert client.getRemainingLimit() > 0  # not read as a ban
    tight.reset()
    cx = exchange(tight, LIMITED_KEY, LIMITED_SECRET)
    cx.load_markets()
    with pytest.raises(ccxt.BadRequest, match='"errorCode":110'):
        for _ in range(3):
            cx.fetch_balance()
