"""An anonymous buyer's whole flow (``BUYER_AUTH=none``) through the client openapi-python-client
generates from the live /openapi.json (package ``flash_sale_client``), against a live API
(API_URL, ADMIN_TOKEN): the hold, its order and their reads take the hold's ``client_secret``
(an ``AuthenticatedClient`` sending it as ``Client-Secret``; the generated functions accept no
other). Checked with ``mypy --strict``, then run."""

import os
from typing import assert_never

from flash_sale_client.api.admin import create_product
from flash_sale_client.api.holds import create_hold, get_hold
from flash_sale_client.api.orders import create_order, get_order
from flash_sale_client.api.payments import payment_webhook
from flash_sale_client.api.products import get_product
from flash_sale_client.client import AuthenticatedClient, Client
from flash_sale_client.models import (
    CreateHold,
    CreateOrder,
    HoldState,
    NewProduct,
    OrderState,
    PaymentWebhook,
    Problem,
    ProblemCode,
    WebhookStatus,
)
from flash_sale_client.types import Unset


def explain(problem: Problem) -> str:
    """What a buyer is told; mypy checks that every code the document lists is handled."""
    code = problem.code
    match code:
        case ProblemCode.INSUFFICIENT_STOCK:
            available = 0 if isinstance(problem.available, Unset) else problem.available
            return f"only {available} left"
        case ProblemCode.BUYER_LIMIT_EXCEEDED:
            remaining = 0 if isinstance(problem.remaining, Unset) else problem.remaining
            return f"you can hold {remaining} more"
        case ProblemCode.BUYER_ID_REQUIRED:
            return "please sign in to buy this product"
        case ProblemCode.SALE_NOT_STARTED:
            return f"the sale opens at {problem.sale_starts_at}"
        case ProblemCode.SALE_ENDED:
            return "the sale has ended"
        case ProblemCode.NO_REFUND_DUE:
            return "no refund is due for this order"
        case ProblemCode.IDEMPOTENCY_KEY_IN_USE:
            return "still working on it, retry shortly"
        case ProblemCode.HOLD_EXPIRED | ProblemCode.HOLD_RELEASED | ProblemCode.HOLD_NOT_ACTIVE:
            return "your reservation is no longer active"
        case (
            ProblemCode.PRODUCT_NOT_FOUND
            | ProblemCode.HOLD_NOT_FOUND
            | ProblemCode.ORDER_NOT_FOUND
            | ProblemCode.NOT_FOUND
        ):
            return "not found"
        case ProblemCode.MALFORMED_REQUEST | ProblemCode.VALIDATION_ERROR:
            errors = [] if isinstance(problem.errors, Unset) else problem.errors
            return "; ".join(f"{e.field}: {e.message}" for e in errors)
        case (
            ProblemCode.UNSUPPORTED_MEDIA_TYPE
            | ProblemCode.PAYLOAD_TOO_LARGE
            | ProblemCode.METHOD_NOT_ALLOWED
            | ProblemCode.HOLD_MISMATCH
            | ProblemCode.AMOUNT_MISMATCH
            | ProblemCode.IDEMPOTENCY_KEY_MISMATCH
            | ProblemCode.INVALID_SIGNATURE
            | ProblemCode.UNAUTHORIZED
        ):
            return f"request refused ({code})"
        case ProblemCode.RATE_LIMITED | ProblemCode.UNAVAILABLE:
            return "busy, retry later"
        case ProblemCode.INTERNAL:
            return "something went wrong on our side"
        case _:
            assert_never(code)


def main() -> None:
    base_url = os.environ.get("API_URL", "http://127.0.0.1:8000")
    api = Client(base_url=base_url, raise_on_unexpected_status=True)
    admin = AuthenticatedClient(
        base_url=base_url, token=os.environ.get("ADMIN_TOKEN", ""), raise_on_unexpected_status=True
    )

    made = create_product.sync_detailed(
        client=admin, body=NewProduct(name="Python client", price="12.50", stock=3)
    )
    product = made.parsed
    if isinstance(product, Problem) or product is None:
        raise SystemExit(f"create product: {made.status_code} {product}")
    assert made.headers["Location"] == f"/api/products/{product.id}"

    read = get_product.sync(client=api, id=product.id)
    assert not isinstance(read, Problem) and read is not None and read.available_stock == 3

    hold = create_hold.sync(
        client=api, body=CreateHold(product_id=product.id, qty=2), idempotency_key=f"py-{product.id}"
    )
    if isinstance(hold, Problem) or hold is None:
        raise SystemExit(f"hold refused: {hold if hold is None else explain(hold)}")
    assert hold.status == HoldState.ACTIVE

    replay = create_hold.sync_detailed(
        client=api, body=CreateHold(product_id=product.id, qty=2), idempotency_key=f"py-{product.id}"
    )
    assert replay.headers.get("Idempotent-Replayed") == "true"

    # One unit is left: asking for two is a 409, and the code says why.
    refused = create_hold.sync_detailed(client=api, body=CreateHold(product_id=product.id, qty=2))
    assert refused.status_code == 409, refused.status_code
    problem = refused.parsed
    if not isinstance(problem, Problem):
        raise SystemExit(f"a second hold of 2 was granted: {problem}")
    match problem.code:
        case ProblemCode.INSUFFICIENT_STOCK:
            assert problem.available == 1, problem.available
        case other:
            raise SystemExit(f"unexpected {other}: {explain(problem)}")

    # The hold is this buyer's by its secret, given once, in the 201 (and its replay).
    secret = hold.client_secret
    if not isinstance(secret, str):
        raise SystemExit("no client_secret in an anonymous buyer's hold")
    assert replay.parsed is not None and not isinstance(replay.parsed, Problem)
    assert replay.parsed.client_secret == secret

    def holding(secret: str) -> AuthenticatedClient:
        return AuthenticatedClient(
            base_url=base_url,
            token=secret,
            prefix="",
            auth_header_name="Client-Secret",
            raise_on_unexpected_status=True,
        )

    mine = holding(secret)
    read_back = get_hold.sync(client=mine, id=hold.hold_id)
    assert not isinstance(read_back, Problem) and read_back is not None
    assert read_back.status == HoldState.ACTIVE and read_back.client_secret is None
    guessed = get_hold.sync_detailed(client=holding("not-the-secret"), id=hold.hold_id)
    assert guessed.status_code == 404, guessed.status_code

    order = create_order.sync(client=mine, body=CreateOrder(hold_id=hold.hold_id))
    if isinstance(order, Problem) or order is None:
        raise SystemExit(f"order refused: {order if order is None else explain(order)}")
    assert order.status == OrderState.PENDING

    paid = payment_webhook.sync(
        client=api,
        body=PaymentWebhook(
            idempotency_key=f"py-pay-{order.order_id}", order_id=order.order_id, status=WebhookStatus.SUCCESS
        ),
    )
    if isinstance(paid, Problem) or paid is None:
        raise SystemExit(f"webhook refused: {paid if paid is None else explain(paid)}")
    assert paid.order_status == OrderState.PAID and not paid.duplicate

    after = get_order.sync(client=mine, id=order.order_id)
    assert not isinstance(after, Problem) and after is not None and after.status == OrderState.PAID
    stock = get_product.sync(client=api, id=product.id)
    assert not isinstance(stock, Problem) and stock is not None
    assert (stock.stock, stock.available_stock) == (1, 1)
    print("python flow: ok")


if __name__ == "__main__":
    main()
