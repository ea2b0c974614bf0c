"""Bitvavo's error answers: `{"errorCode": N, "error": "text"}` with the HTTP status of
reference/bitvavo-api.md ("Error codes that matter"). Every module raises `ApiError`; the HTTP
layer turns it into the response, so status and code can never drift apart."""

from __future__ import annotations

# code -> HTTP status. Codes not listed answer 400.
_HTTP_STATUS = {
    101: 500,
    105: 429,
    110: 429,
    107: 503,
    109: 503,
    240: 404,
    431: 409,
    **{code: 403 for code in range(300, 320)},
}

# Bitvavo's own wording where the reference (or ccxt's exception table) records it.
MESSAGES = {
    101: "Unknown error. Operation may or may not have succeeded.",
    102: "Invalid JSON.",
    107: "The matching engine is overloaded. Please wait 500ms and resubmit your order.",
    108: "The matching engine could not process your order in time. Please consider increasing "
    "the access window or resubmit your order.",
    109: "The matching engine did not respond in time. Operation may or may not have succeeded.",
    216: "You do not have sufficient balance to complete this operation.",
    212: "Amount is below the minimum allowed amount for this asset.",
    214: "Price is too detailed",
    # ccxt's exception table records this wording for 233 (Bitvavo's docs: "Only orders with
    # status new or partiallyFilled can be deleted.").
    233: "Order must be active (status new or partiallyFilled) to allow updating/cancelling.",
    235: "You can only have 100 open orders on each book.",
    240: "No order found. Please be aware that simultaneously updating the same order may "
    "return this error.",
    300: "Authentication is required for this endpoint.",
    301: "API Key must be of length 64.",
    302: "Timestamp is invalid. This must be a timestamp in ms. See Bitvavo-Access-Timestamp "
    "header or timestamp parameter for websocket.",
    303: "Window must be between 100 and 60000 ms.",
    304: "Request was not received within acceptable window (default 30s, or custom with "
    "Bitvavo-Access-Window header) of Bitvavo-Access-Timestamp header (or timestamp parameter "
    "for websocket).",
    305: "No active API key found.",
    308: "The signature length is invalid (HMAC-SHA256 should return a 64 length hexadecimal "
    "string).",
    309: "The signature is invalid.",
    310: "This key does not allow trading actions.",
    311: "This key does not allow showing account information.",
    400: "Unknown error. Please contact support with a copy of your request.",
}


def http_status_for(code: int) -> int:
    return _HTTP_STATUS.get(code, 400)


class ApiError(Exception):
    """An answer in Bitvavo's error shape. `http_status` defaults to the reference table."""

    def __init__(self, code: int, message: str | None = None, http_status: int | None = None):
        self.code = code
        self.message = message if message is not None else MESSAGES.get(code, "Unknown error.")
        self.http_status = http_status if http_status is not None else http_status_for(code)
        super().__init__(f"{self.http_status}/{code}: {self.message}")

    def body(self) -> dict[str, object]:
        return {"errorCode": self.code, "error": self.message}


def required(param: str) -> ApiError:
    return ApiError(203, f"{param} parameter is required.")


def invalid(param: str) -> ApiError:
    return ApiError(205, f"{param} parameter is invalid.")
