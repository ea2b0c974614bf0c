"""G3 key separation: each client refuses the other role's methods and the wrong key, and the
scanner's side of shared.exchange never imports the trade client."""

from __future__ import annotations

import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from pytest_httpx import HTTPXMock

from shared.exchange.errors import ExchangeError, KeySeparationError, MissingCredentials
from shared.exchange.models import Market
from shared.exchange.paper import PaperTrade
from shared.exchange.readonly import BitvavoReadonly
from shared.exchange.settings import ReadonlyExchangeSettings, TradeExchangeSettings
from shared.exchange.trade import BitvavoTrade
from tests.exchange_doubles import (
    BASE_URL,
    OPERATOR_ID,
    READONLY_KEY,
    READONLY_SECRET,
    TRADE_KEY,
    TRADE_SECRET,
    markets,
    order_json,
)

ROOT = Path(__file__).resolve().parents[1]

COID = "2be7d0df-d5dc-4b53-a250-3376f3b393e6"
TRADE_METHODS = {
    "place_market_order": (
        ("BTC-EUR", "buy"),
        {"amount_quote": Decimal("10"), "client_order_id": COID},
    ),
    "get_order": (("BTC-EUR",), {"order_id": "1"}),
    "cancel_order": (("BTC-EUR",), {"order_id": "1"}),
}
MARKET_DATA_METHODS = {
    "time": ((), {}),
    "markets": ((), {}),
    "assets": ((), {}),
    "ticker_price": (("BTC-EUR",), {}),
    "ticker_book": (("BTC-EUR",), {}),
    "ticker_24h": (("BTC-EUR",), {}),
    "order_book": (("BTC-EUR",), {}),
    "candles": (("BTC-EUR", "1h"), {}),
    "balance": ((), {}),
}


@pytest.fixture(autouse=True)
def _no_ambient_readonly_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BITVAVO_READONLY_API_KEY",
        "BITVAVO_READONLY_API_SECRET",
        "BITVAVO_TRADE_API_KEY",
        "BITVAVO_TRADE_API_SECRET",
        "BITVAVO_OPERATOR_ID",
        "BITVAVO_REST_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def make_trade(**overrides: object) -> BitvavoTrade:
    kwargs: dict[str, object] = {
        "api_key": TRADE_KEY,
        "api_secret": TRADE_SECRET,
        "operator_id": OPERATOR_ID,
        "markets": markets,
    } | overrides
    return BitvavoTrade(BASE_URL, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", sorted(TRADE_METHODS))
@pytest.mark.parametrize("with_key", [False, True])
def test_g3_readonly_client_cannot_trade(
    httpx_mock: HTTPXMock, method: str, with_key: bool
) -> None:
    keys = {"api_key": READONLY_KEY, "api_secret": READONLY_SECRET} if with_key else {}
    client = BitvavoReadonly(BASE_URL, **keys)
    args, kwargs = TRADE_METHODS[method]
    with pytest.raises(KeySeparationError) as caught:
        getattr(client, method)(*args, **kwargs)
    assert "BitvavoReadonly cannot" in str(caught.value)
    assert "use BitvavoTrade in trading_execute" in str(caught.value)
    assert not isinstance(caught.value, ExchangeError)
    assert httpx_mock.get_requests() == []


@pytest.mark.parametrize("method", sorted(MARKET_DATA_METHODS))
def test_g3_trade_client_does_not_fetch_market_data(httpx_mock: HTTPXMock, method: str) -> None:
    client = make_trade()
    args, kwargs = MARKET_DATA_METHODS[method]
    with pytest.raises(KeySeparationError) as caught:
        getattr(client, method)(*args, **kwargs)
    assert "BitvavoTrade cannot" in str(caught.value)
    assert "use BitvavoReadonly" in str(caught.value)
    assert httpx_mock.get_requests() == []


def test_g3_trade_client_refuses_the_readonly_key() -> None:
    with pytest.raises(KeySeparationError, match="BitvavoTrade refuses the read-only key"):
        make_trade(api_key=READONLY_KEY, readonly_api_key=READONLY_KEY)


def test_g3_trade_client_checks_the_environment_readonly_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BITVAVO_READONLY_API_KEY", TRADE_KEY)
    with pytest.raises(KeySeparationError):
        make_trade()


def test_g3_trade_settings_refuse_equal_keys_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITVAVO_TRADE_API_KEY", TRADE_KEY)
    monkeypatch.setenv("BITVAVO_READONLY_API_KEY", TRADE_KEY)
    with pytest.raises(KeySeparationError) as caught:
        TradeExchangeSettings()
    assert TRADE_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("missing", "name"),
    [
        ({"api_key": None}, "BITVAVO_TRADE_API_KEY"),
        ({"api_key": ""}, "BITVAVO_TRADE_API_KEY"),
        ({"api_secret": None}, "BITVAVO_TRADE_API_SECRET"),
        ({"operator_id": None}, "BITVAVO_OPERATOR_ID"),
    ],
)
def test_g3_trade_client_refuses_missing_credentials(missing: dict[str, object], name: str) -> None:
    with pytest.raises(MissingCredentials, match=name):
        make_trade(**missing)


def test_g3_trade_client_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingCredentials):
        BitvavoTrade.from_settings(markets=markets)  # paper-mode environment: no trade key
    monkeypatch.setenv("BITVAVO_TRADE_API_KEY", TRADE_KEY)
    monkeypatch.setenv("BITVAVO_TRADE_API_SECRET", TRADE_SECRET)
    monkeypatch.setenv("BITVAVO_OPERATOR_ID", str(OPERATOR_ID))
    monkeypatch.setenv("BITVAVO_REST_URL", BASE_URL + "/")
    client = BitvavoTrade.from_settings(markets=markets)
    assert client.operator_id == OPERATOR_ID
    assert str(client.transport.base_url) == BASE_URL
    monkeypatch.setenv("BITVAVO_READONLY_API_KEY", TRADE_KEY)
    with pytest.raises(KeySeparationError):
        BitvavoTrade.from_settings(markets=markets)


def test_g3_trade_client_sizes_orders_from_an_injected_lookup_only(
    httpx_mock: HTTPXMock,
) -> None:
    """The live client needs the market listing but never fetches it: it is handed a lookup
    (MarketCatalog on a read-only client in trading_execute) and sends only POST /order."""
    with pytest.raises(TypeError, match="markets"):
        BitvavoTrade(  # type: ignore[call-arg]
            BASE_URL, api_key=TRADE_KEY, api_secret=TRADE_SECRET, operator_id=OPERATOR_ID
        )
    asked: list[str] = []

    def lookup(name: str) -> Market:
        asked.append(name)
        return markets(name)

    httpx_mock.add_response(method="POST", url=BASE_URL + "/order", json=order_json())
    make_trade(markets=lookup).place_market_order(
        "BTC-EUR", "buy", amount_quote=Decimal("10"), client_order_id=COID
    )
    assert asked == ["BTC-EUR"]
    assert [(r.method, r.url.path) for r in httpx_mock.get_requests()] == [("POST", "/v2/order")]


def test_readonly_client_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BitvavoReadonly.from_settings().has_credentials is False
    monkeypatch.setenv("BITVAVO_READONLY_API_KEY", READONLY_KEY)
    monkeypatch.setenv("BITVAVO_READONLY_API_SECRET", READONLY_SECRET)
    assert BitvavoReadonly.from_settings().has_credentials is True


def test_readonly_client_needs_key_and_secret_together() -> None:
    with pytest.raises(MissingCredentials):
        BitvavoReadonly(BASE_URL, api_key=READONLY_KEY)


def test_readonly_settings_have_no_trade_key_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITVAVO_TRADE_API_KEY", TRADE_KEY)
    settings = ReadonlyExchangeSettings()
    assert TRADE_KEY not in repr(settings.model_dump())


def test_settings_never_print_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITVAVO_TRADE_API_KEY", TRADE_KEY)
    monkeypatch.setenv("BITVAVO_TRADE_API_SECRET", TRADE_SECRET)
    monkeypatch.setenv("BITVAVO_OPERATOR_ID", "1")
    text = repr(TradeExchangeSettings()) + str(TradeExchangeSettings())
    assert TRADE_KEY not in text and TRADE_SECRET not in text
    monkeypatch.setenv("BITVAVO_READONLY_API_SECRET", READONLY_SECRET)
    with pytest.raises(ValueError) as caught:  # secret without key
        ReadonlyExchangeSettings()
    assert READONLY_SECRET not in str(caught.value)


def test_paper_trader_has_the_trade_interface() -> None:
    for method in TRADE_METHODS:
        assert callable(getattr(PaperTrade, method))
        assert callable(getattr(BitvavoTrade, method))


def test_g3_shared_exchange_does_not_import_the_trade_client() -> None:
    code = (
        "import sys, shared.exchange as e\n"
        "assert 'shared.exchange.trade' not in sys.modules, sorted(sys.modules)\n"
        "assert not hasattr(e, 'BitvavoTrade')\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_g3_shared_exchange_imports_without_trade_py(tmp_path: Path) -> None:
    """The scanner's bundle: a copy of `shared` with trade.py removed still imports, read-only
    client and paper trader included."""
    shutil.copytree(
        ROOT / "shared", tmp_path / "shared", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "shared" / "exchange" / "trade.py").unlink()
    code = (
        "import shared.exchange as e\n"
        f"assert e.__file__.startswith({str(tmp_path)!r}), e.__file__\n"
        "from shared.exchange.readonly import BitvavoReadonly\n"
        "from shared.exchange.paper import PaperTrade\n"
        "assert BitvavoReadonly and PaperTrade\n"
        "try:\n"
        "    from shared.exchange.trade import BitvavoTrade\n"
        "except ModuleNotFoundError:\n"
        "    print('no trade client')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no trade client"
