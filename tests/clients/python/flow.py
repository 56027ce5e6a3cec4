"""An anonymous buyer's whole flow (``BUYER_AUTH=none``) through the client openapi-python-client
generates from the live /openapi.json (package ``flash_sale_client``), against a live API
(API_URL, ADMIN_TOKEN): the hold, its order and their reads take the hold's ``client_secret``
(an ``AuthenticatedClient`` sending it as ``Client-Secret``; the generated functions accept no
other). Then the fair queue (a worker beside the API admits tickets): two buyers join a product
with ``queue`` admission (the 201 carries the ticket's ``client_secret``, joining again is a 200
with the same ticket), a hold without a ticket, and one with the waiting buyer's, is 403
``admission_required``, the first ticket is polled with its secret until admitted, another
secret reads 404, the second buyer leaves, and the admitted buyer holds with ``ticket_id`` and
the ticket's secret (createHold's ``Client-Secret`` header; the hold is the ticket's buyer's,
the ticket reads ``used``), orders and pays. Checked with ``mypy --strict``, then run."""

import os
import time
from typing import assert_never

from flash_sale_client.api.admin import create_product
from flash_sale_client.api.holds import create_hold, extend_hold, get_hold
from flash_sale_client.api.orders import create_order, get_order
from flash_sale_client.api.payments import payment_webhook
from flash_sale_client.api.products import get_product
from flash_sale_client.api.queue import get_ticket, join_queue, leave_queue
from flash_sale_client.client import AuthenticatedClient, Client
from flash_sale_client.models import (
    AdmissionMode,
    CreateHold,
    CreateOrder,
    HoldLineRequest,
    HoldState,
    JoinQueue,
    NewProduct,
    OrderState,
    PaymentWebhook,
    Problem,
    ProblemCode,
    Ticket,
    TicketState,
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
        case ProblemCode.ADMISSION_REQUIRED:
            if isinstance(problem.position, Unset):
                return "please wait for your turn in the queue"
            return f"please wait: {problem.position} ahead of you in the queue"
        case ProblemCode.QUEUE_CLOSED:
            return "the queue is closed"
        case ProblemCode.NO_REFUND_DUE:
            return "no refund is due for this order"
        case ProblemCode.EXTENSION_LIMIT:
            return "your reservation cannot be extended any further"
        case ProblemCode.IDEMPOTENCY_KEY_IN_USE:
            return "still working on it, retry shortly"
        case ProblemCode.HOLD_EXPIRED | ProblemCode.HOLD_RELEASED | ProblemCode.HOLD_NOT_ACTIVE:
            return "your reservation is no longer active"
        case (
            ProblemCode.PRODUCT_NOT_FOUND
            | ProblemCode.HOLD_NOT_FOUND
            | ProblemCode.ORDER_NOT_FOUND
            | ProblemCode.TICKET_NOT_FOUND
            | ProblemCode.NOT_FOUND
        ):
            return "not found"
        case ProblemCode.MALFORMED_REQUEST | ProblemCode.VALIDATION_ERROR:
            errors = [] if isinstance(problem.errors, Unset) else problem.errors
            return "; ".join(f"{e.field}: {e.message}" for e in errors)
        case (
            ProblemCode.NO_QUEUE
            | ProblemCode.UNSUPPORTED_MEDIA_TYPE
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


def holding(base_url: str, secret: str) -> AuthenticatedClient:
    """A client sending a hold's or a ticket's ``client_secret`` as ``Client-Secret``."""
    return AuthenticatedClient(
        base_url=base_url,
        token=secret,
        prefix="",
        auth_header_name="Client-Secret",
        raise_on_unexpected_status=True,
    )


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

    mine = holding(base_url, secret)
    read_back = get_hold.sync(client=mine, id=hold.hold_id)
    assert not isinstance(read_back, Problem) and read_back is not None
    assert read_back.status == HoldState.ACTIVE and read_back.client_secret is None
    guessed = get_hold.sync_detailed(client=holding(base_url, "not-the-secret"), id=hold.hold_id)
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


def admitted(mine: AuthenticatedClient, ticket_id: int) -> Ticket:
    """The ticket once the worker has admitted it, read with its secret every 200 ms for 15 s."""
    deadline = time.monotonic() + 15
    while True:
        read = get_ticket.sync(client=mine, id=ticket_id)
        if isinstance(read, Problem) or read is None:
            raise SystemExit(f"ticket {ticket_id} unreadable: {read if read is None else explain(read)}")
        if read.state == TicketState.ADMITTED:
            return read
        assert read.state == TicketState.WAITING, f"ticket {ticket_id} {read.state} before its admission"
        if time.monotonic() > deadline:
            raise SystemExit(f"ticket {ticket_id} not admitted within 15 s")
        time.sleep(0.2)


def queue() -> None:
    base_url = os.environ.get("API_URL", "http://127.0.0.1:8000")
    api = Client(base_url=base_url, raise_on_unexpected_status=True)
    admin = AuthenticatedClient(
        base_url=base_url, token=os.environ.get("ADMIN_TOKEN", ""), raise_on_unexpected_status=True
    )
    product = create_product.sync(
        client=admin,
        body=NewProduct(
            name="Python queue",
            price="20.00",
            stock=1,
            admission=AdmissionMode.QUEUE,
            admission_window_seconds=60,
        ),
    )
    if isinstance(product, Problem) or product is None:
        raise SystemExit(f"create queue product: {product}")

    # Ann joins first; her ticket is reached by the secret of this 201 (and of its retry).
    key = f"py-queue-ann-{product.id}"
    ann = JoinQueue(buyer_id="ann")
    joined = join_queue.sync_detailed(product.id, client=api, body=ann, idempotency_key=key)
    ticket = joined.parsed
    if isinstance(ticket, Problem) or ticket is None:
        raise SystemExit(f"join refused: {ticket if ticket is None else explain(ticket)}")
    assert joined.status_code == 201, joined.status_code
    assert ticket.state in (TicketState.WAITING, TicketState.ADMITTED), ticket.state
    secret = ticket.client_secret
    if secret is None:
        raise SystemExit("no client_secret in an anonymous buyer's ticket")
    again = join_queue.sync_detailed(product.id, client=api, body=ann, idempotency_key=key)
    assert again.status_code == 200, again.status_code
    assert isinstance(again.parsed, Ticket) and again.parsed.ticket_id == ticket.ticket_id
    assert again.parsed.client_secret == secret

    # Bob joins behind her: one unit, taken by her admission, so he waits.
    bob_joined = join_queue.sync_detailed(
        product.id, client=api, body=JoinQueue(buyer_id="bob"), idempotency_key=f"py-queue-bob-{product.id}"
    )
    bob_ticket = bob_joined.parsed
    if not isinstance(bob_ticket, Ticket) or bob_ticket.client_secret is None:
        raise SystemExit(f"bob's join: {bob_ticket}")
    assert bob_joined.status_code == 201 and bob_ticket.state == TicketState.WAITING, bob_ticket.state
    bob = holding(base_url, bob_ticket.client_secret)

    # No ticket; bob's ticket, still waiting: 403, and the code says why.
    attempts: list[tuple[str, AuthenticatedClient | Client, CreateHold]] = [
        ("no ticket", api, CreateHold(product_id=product.id, qty=1)),
        ("bob", bob, CreateHold(product_id=product.id, qty=1, ticket_id=bob_ticket.ticket_id)),
    ]
    for who, client, body in attempts:
        refused = create_hold.sync_detailed(client=client, body=body)
        assert refused.status_code == 403, (who, refused.status_code)
        problem = refused.parsed
        if not isinstance(problem, Problem):
            raise SystemExit(f"{who}: a hold was granted without an admission: {problem}")
        match problem.code:
            case ProblemCode.ADMISSION_REQUIRED:
                state = None if isinstance(problem.ticket_state, Unset) else problem.ticket_state
                assert state == (TicketState.WAITING if who == "bob" else None), (who, state)
            case other:
                raise SystemExit(f"{who}: unexpected {other}: {explain(problem)}")

    mine = holding(base_url, secret)
    admission = admitted(mine, ticket.ticket_id)
    assert admission.position == 0 and admission.admission_expires_at is not None, admission
    for stranger in (holding(base_url, "not-the-secret"), bob):
        peek = get_ticket.sync_detailed(client=stranger, id=ticket.ticket_id)
        assert peek.status_code == 404, peek.status_code
        assert isinstance(peek.parsed, Problem) and peek.parsed.code == ProblemCode.TICKET_NOT_FOUND

    left = leave_queue.sync_detailed(client=bob, id=bob_ticket.ticket_id)
    assert left.status_code == 200, left.status_code
    assert isinstance(left.parsed, Ticket) and left.parsed.state == TicketState.LEFT, left.parsed

    # The admission makes one hold: the ticket named, its secret as `Client-Secret`.
    admitted_hold = CreateHold(product_id=product.id, qty=1, ticket_id=ticket.ticket_id)
    hold = create_hold.sync(client=api, body=admitted_hold, client_secret=secret)
    if isinstance(hold, Problem) or hold is None:
        raise SystemExit(f"admitted hold refused: {hold if hold is None else explain(hold)}")
    assert hold.status == HoldState.ACTIVE and hold.buyer_id == "ann", hold
    used = get_ticket.sync(client=mine, id=ticket.ticket_id)
    assert isinstance(used, Ticket) and used.state == TicketState.USED, used
    if hold.client_secret is None:
        raise SystemExit("no client_secret in the admitted hold")

    # From here on the hold is reached by its own secret, as any other.
    holder = holding(base_url, hold.client_secret)
    order = create_order.sync(client=holder, body=CreateOrder(hold_id=hold.hold_id))
    if isinstance(order, Problem) or order is None:
        raise SystemExit(f"order refused: {order if order is None else explain(order)}")
    assert order.status == OrderState.PENDING and order.total_price == "20.00"
    paid = payment_webhook.sync(
        client=api,
        body=PaymentWebhook(
            idempotency_key=f"py-queue-pay-{order.order_id}",
            order_id=order.order_id,
            status=WebhookStatus.SUCCESS,
        ),
    )
    if isinstance(paid, Problem) or paid is None:
        raise SystemExit(f"webhook refused: {paid if paid is None else explain(paid)}")
    assert paid.order_status == OrderState.PAID
    print("python queue flow: ok")


def cart() -> None:
    """A cart: a ticket and a parking pass held together, a second cart wanting the gone pass
    refused with its line named, the hold extended, ordered as one and paid for its total."""
    base_url = os.environ.get("API_URL", "http://127.0.0.1:8000")
    api = Client(base_url=base_url, raise_on_unexpected_status=True)
    admin = AuthenticatedClient(
        base_url=base_url, token=os.environ.get("ADMIN_TOKEN", ""), raise_on_unexpected_status=True
    )
    ids: list[int] = []
    for name, price, stock in (("Python cart ticket", "40.00", 5), ("Python cart parking", "7.25", 1)):
        made = create_product.sync(client=admin, body=NewProduct(name=name, price=price, stock=stock))
        if isinstance(made, Problem) or made is None:
            raise SystemExit(f"create {name}: {made}")
        ids.append(made.id)
    ticket, parking = ids
    both = [HoldLineRequest(product_id=parking, qty=1), HoldLineRequest(product_id=ticket, qty=2)]
    held = create_hold.sync(client=api, body=CreateHold(lines=both))
    if isinstance(held, Problem) or held is None:
        raise SystemExit(f"cart refused: {held if held is None else explain(held)}")
    assert held.total_price == "87.25", held.total_price
    assert not isinstance(held.lines, Unset) and len(held.lines) == 2, held.lines

    again = [HoldLineRequest(product_id=ticket, qty=1), HoldLineRequest(product_id=parking, qty=1)]
    refused = create_hold.sync_detailed(client=api, body=CreateHold(lines=again))
    problem = refused.parsed
    if not isinstance(problem, Problem) or isinstance(problem.lines, Unset):
        raise SystemExit(f"a cart beyond the stock: {refused.status_code} {problem}")
    assert refused.status_code == 409, refused.status_code
    assert [(line.product_id, line.code) for line in problem.lines] == [
        (parking, ProblemCode.INSUFFICIENT_STOCK)
    ], problem.lines

    if held.client_secret is None:
        raise SystemExit("no client_secret in the cart")
    mine = holding(base_url, held.client_secret)
    extended = extend_hold.sync(client=mine, id=held.hold_id)
    if isinstance(extended, Problem) or extended is None:
        raise SystemExit(f"extension refused: {extended if extended is None else explain(extended)}")
    assert extended.status == HoldState.ACTIVE, extended.status
    order = create_order.sync(client=mine, body=CreateOrder(hold_id=held.hold_id))
    if isinstance(order, Problem) or order is None:
        raise SystemExit(f"cart order refused: {order if order is None else explain(order)}")
    assert order.total_price == "87.25" and not isinstance(order.lines, Unset) and len(order.lines) == 2
    paid = payment_webhook.sync(
        client=api,
        body=PaymentWebhook(
            idempotency_key=f"py-cart-pay-{order.order_id}",
            order_id=order.order_id,
            status=WebhookStatus.SUCCESS,
            amount="87.25",
        ),
    )
    if isinstance(paid, Problem) or paid is None:
        raise SystemExit(f"cart payment refused: {paid if paid is None else explain(paid)}")
    assert paid.order_status == OrderState.PAID
    print("python cart flow: ok")


if __name__ == "__main__":
    main()
    queue()
    cart()
