"""The Bitvavo exchange layer (SPEC §5): signing and errors at the ground, the transport above,
the clients on top.

Import from the defining modules (no re-exports here):

    from shared.exchange.readonly import BitvavoReadonly      market data and balance (view key)
    from shared.exchange.paper import PaperTrade              paper fills at the ticker price
    from shared.exchange.trade import BitvavoTrade            orders with the trade key
    from shared.exchange.models import Order, Market, …
    from shared.exchange.errors import ExchangeError, OutcomeUnknown, …

This package never imports `shared.exchange.trade` (G3): the scanner's bundle ships without
trade.py and must still import it. trading_execute composes the live client with what it needs
from the read-only side: `shared.exchange.catalog.MarketCatalog` (the market listings every order
is sized by, through `shared.exchange.precision`) and `shared.exchange.clock.ServerClock`
(Bitvavo's time to sign with).
"""
