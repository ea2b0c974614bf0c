"""The Bitvavo exchange layer (SPEC §5).

Exports the read-only client, the paper trader, the models and the errors. It deliberately does
NOT import `shared.exchange.trade` (G3): the scanner's bundle ships without trade.py and must
still import this package. trading_execute imports the live client explicitly:

    from shared.exchange.trade import BitvavoTrade

and composes it with what it needs from the read-only side (each imported from its module):
`shared.exchange.catalog.MarketCatalog` (the market listings every order is sized by, through
`shared.exchange.precision`) and `shared.exchange.clock.ServerClock` (Bitvavo's time to sign with).
"""

from shared.exchange.errors import (
    AccessWindowError,
    ApiKeyInactive,
    AuthenticationError,
    BelowMinimumSize,
    ClientOrderIdConflict,
    ExchangeError,
    ExchangeRejected,
    ExchangeServerError,
    ExchangeTimeout,
    ExchangeTransportError,
    ExchangeUsageError,
    InsufficientBalance,
    InvalidJson,
    InvalidOrderRequest,
    InvalidParameter,
    InvalidRequest,
    InvalidSignature,
    IpNotWhitelisted,
    KeySeparationError,
    MalformedResponse,
    MarketUnavailable,
    MissingCredentials,
    OrderNotFound,
    OutcomeUnknown,
    PermissionDenied,
    RateLimitBanned,
    RateLimitWouldExceed,
    TradePermissionMissing,
    ViewPermissionMissing,
    error_for,
)
from shared.exchange.models import (
    Asset,
    Balance,
    BookLevel,
    Candle,
    Fill,
    Market,
    Order,
    OrderBook,
    OrderCancellation,
    OrderRequest,
    Ticker24h,
    TickerBook,
    TickerPrice,
)
from shared.exchange.paper import PaperTrade
from shared.exchange.readonly import BitvavoReadonly
from shared.exchange.roles import OrderClient
from shared.exchange.settings import ReadonlyExchangeSettings, TradeExchangeSettings
from shared.exchange.transport import BitvavoTransport, Credentials

__all__ = [
    "AccessWindowError",
    "ApiKeyInactive",
    "Asset",
    "AuthenticationError",
    "Balance",
    "BelowMinimumSize",
    "BitvavoReadonly",
    "BitvavoTransport",
    "BookLevel",
    "Candle",
    "ClientOrderIdConflict",
    "Credentials",
    "ExchangeError",
    "ExchangeRejected",
    "ExchangeServerError",
    "ExchangeTimeout",
    "ExchangeTransportError",
    "ExchangeUsageError",
    "Fill",
    "InsufficientBalance",
    "InvalidJson",
    "InvalidOrderRequest",
    "InvalidParameter",
    "InvalidRequest",
    "InvalidSignature",
    "IpNotWhitelisted",
    "KeySeparationError",
    "MalformedResponse",
    "Market",
    "MarketUnavailable",
    "MissingCredentials",
    "Order",
    "OrderBook",
    "OrderCancellation",
    "OrderClient",
    "OrderNotFound",
    "OrderRequest",
    "OutcomeUnknown",
    "PaperTrade",
    "PermissionDenied",
    "RateLimitBanned",
    "RateLimitWouldExceed",
    "ReadonlyExchangeSettings",
    "Ticker24h",
    "TickerBook",
    "TickerPrice",
    "TradeExchangeSettings",
    "TradePermissionMissing",
    "ViewPermissionMissing",
    "error_for",
]
