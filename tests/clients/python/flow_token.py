"""A signed-in buyer's flow (``BUYER_AUTH=jwt``) through the generated client, against a live
API (API_URL, ADMIN_TOKEN, BUYER_JWT_SECRET): the shop's identity provider signs a token (HS256,
with the standard library here), the buyer holds and orders with it through an
``AuthenticatedClient`` (the generated functions of buyer routes accept no other), another
buyer's token reaches nothing. Then the fair queue (a worker beside the API admits tickets), with
tokens only: two buyers join a product with ``queue`` admission (201; joining again is a 200 with
the same ticket), a buyer without a ticket and the one still waiting are refused a hold with 403
``admission_required``, the first ticket is polled until admitted, another buyer reads it as
404, the second buyer leaves, and the admitted buyer holds (the ticket reads ``used``), orders
and pays. Checked with ``mypy --strict``, then run."""

import base64
import hashlib
import hmac
import json
import os
import time

from flash_sale_client.api.admin import create_product
from flash_sale_client.api.holds import create_hold, get_hold
from flash_sale_client.api.orders import create_order, get_order
from flash_sale_client.api.payments import payment_webhook
from flash_sale_client.api.queue import get_ticket, join_queue, leave_queue
from flash_sale_client.client import AuthenticatedClient, Client
from flash_sale_client.models import (
    AdmissionMode,
    CreateHold,
    CreateOrder,
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


def token_for(sub: str) -> str:
    """What the shop's identity provider gives a signed-in user: an HS256 JWT for ``sub``."""

    def b64(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    unsigned = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'sub': sub, 'iat': now, 'exp': now + 600})}"
    key = os.environ["BUYER_JWT_SECRET"].encode()
    signature = hmac.new(key, unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def main() -> None:
    base_url = os.environ.get("API_URL", "http://127.0.0.1:8000")
    admin = AuthenticatedClient(
        base_url=base_url, token=os.environ.get("ADMIN_TOKEN", ""), raise_on_unexpected_status=True
    )
    made = create_product.sync(client=admin, body=NewProduct(name="Python token client", price="5.00", stock=4))
    if isinstance(made, Problem) or made is None:
        raise SystemExit(f"create product: {made}")

    ann = AuthenticatedClient(base_url=base_url, token=token_for("ann"), raise_on_unexpected_status=True)
    bob = AuthenticatedClient(base_url=base_url, token=token_for("bob"), raise_on_unexpected_status=True)
    hold = create_hold.sync(client=ann, body=CreateHold(product_id=made.id, qty=2))
    if isinstance(hold, Problem) or hold is None:
        raise SystemExit(f"hold refused: {hold}")
    assert hold.buyer_id == "ann" and hold.client_secret is None

    peek = get_hold.sync(client=bob, id=hold.hold_id)
    assert isinstance(peek, Problem) and peek.code == ProblemCode.HOLD_NOT_FOUND, peek

    order = create_order.sync(client=ann, body=CreateOrder(hold_id=hold.hold_id))
    if isinstance(order, Problem) or order is None:
        raise SystemExit(f"order refused: {order}")
    assert order.buyer_id == "ann" and order.total_price == "10.00"
    read = get_order.sync(client=ann, id=order.order_id)
    assert not isinstance(read, Problem) and read is not None and read.status == OrderState.PENDING
    print("python token flow: ok")


def admitted(buyer: AuthenticatedClient, ticket_id: int) -> Ticket:
    """The ticket once the worker has admitted it, read with its buyer's token every 200 ms for 15 s."""
    deadline = time.monotonic() + 15
    while True:
        read = get_ticket.sync(client=buyer, id=ticket_id)
        if not isinstance(read, Ticket):
            raise SystemExit(f"ticket {ticket_id} unreadable: {read}")
        if read.state == TicketState.ADMITTED:
            return read
        assert read.state == TicketState.WAITING, f"ticket {ticket_id} {read.state} before its admission"
        if time.monotonic() > deadline:
            raise SystemExit(f"ticket {ticket_id} not admitted within 15 s")
        time.sleep(0.2)


def queue() -> None:
    base_url = os.environ.get("API_URL", "http://127.0.0.1:8000")
    admin = AuthenticatedClient(
        base_url=base_url, token=os.environ.get("ADMIN_TOKEN", ""), raise_on_unexpected_status=True
    )

    def buyer(sub: str) -> AuthenticatedClient:
        return AuthenticatedClient(base_url=base_url, token=token_for(sub), raise_on_unexpected_status=True)

    product = create_product.sync(
        client=admin,
        body=NewProduct(
            name="Python token queue",
            price="20.00",
            stock=1,
            admission=AdmissionMode.QUEUE,
            admission_window_seconds=60,
        ),
    )
    if isinstance(product, Problem) or product is None:
        raise SystemExit(f"create queue product: {product}")

    # Ann joins first: the token says who she is, the body nothing.
    ann, bob, carol = buyer("ann"), buyer("bob"), buyer("carol")
    joined = join_queue.sync_detailed(product.id, client=ann, body=JoinQueue())
    ticket = joined.parsed
    if not isinstance(ticket, Ticket):
        raise SystemExit(f"join refused: {ticket}")
    assert joined.status_code == 201, joined.status_code
    assert ticket.state in (TicketState.WAITING, TicketState.ADMITTED), ticket.state
    assert ticket.buyer_id == "ann" and ticket.client_secret is None, ticket
    again = join_queue.sync_detailed(product.id, client=ann, body=JoinQueue())
    assert again.status_code == 200, again.status_code
    assert isinstance(again.parsed, Ticket) and again.parsed.ticket_id == ticket.ticket_id

    # Bob joins behind her: one unit, taken by her admission, so he waits.
    bob_joined = join_queue.sync_detailed(product.id, client=bob, body=JoinQueue())
    bob_ticket = bob_joined.parsed
    if not isinstance(bob_ticket, Ticket):
        raise SystemExit(f"bob's join refused: {bob_ticket}")
    assert bob_joined.status_code == 201 and bob_ticket.state == TicketState.WAITING, bob_ticket.state

    # No ticket (carol never joined), a waiting ticket (bob's): 403, and the code says why.
    for who, client in [("carol", carol), ("bob", bob)]:
        refused = create_hold.sync_detailed(client=client, body=CreateHold(product_id=product.id, qty=1))
        assert refused.status_code == 403, (who, refused.status_code)
        problem = refused.parsed
        if not isinstance(problem, Problem):
            raise SystemExit(f"{who} held without an admission: {problem}")
        match problem.code:
            case ProblemCode.ADMISSION_REQUIRED:
                state = None if isinstance(problem.ticket_state, Unset) else problem.ticket_state
                assert state == (TicketState.WAITING if who == "bob" else None), (who, state)
            case other:
                raise SystemExit(f"{who}: unexpected {other}: {problem.detail}")

    admission = admitted(ann, ticket.ticket_id)
    assert admission.position == 0 and admission.admission_expires_at is not None, admission
    peek = get_ticket.sync(client=bob, id=ticket.ticket_id)
    assert isinstance(peek, Problem) and peek.code == ProblemCode.TICKET_NOT_FOUND, peek

    left = leave_queue.sync_detailed(client=bob, id=bob_ticket.ticket_id)
    assert left.status_code == 200, left.status_code
    assert isinstance(left.parsed, Ticket) and left.parsed.state == TicketState.LEFT, left.parsed

    # The admission makes one hold: the token's buyer's ticket is found by itself.
    hold = create_hold.sync(client=ann, body=CreateHold(product_id=product.id, qty=1))
    if isinstance(hold, Problem) or hold is None:
        raise SystemExit(f"admitted hold refused: {hold}")
    assert hold.status == HoldState.ACTIVE and hold.buyer_id == "ann", hold
    used = get_ticket.sync(client=ann, id=ticket.ticket_id)
    assert isinstance(used, Ticket) and used.state == TicketState.USED, used

    order = create_order.sync(client=ann, body=CreateOrder(hold_id=hold.hold_id))
    if isinstance(order, Problem) or order is None:
        raise SystemExit(f"order refused: {order}")
    assert order.status == OrderState.PENDING and order.total_price == "20.00", order
    paid = payment_webhook.sync(
        client=Client(base_url=base_url, raise_on_unexpected_status=True),
        body=PaymentWebhook(
            idempotency_key=f"py-queue-pay-{order.order_id}",
            order_id=order.order_id,
            status=WebhookStatus.SUCCESS,
        ),
    )
    if isinstance(paid, Problem) or paid is None:
        raise SystemExit(f"webhook refused: {paid}")
    assert paid.order_status == OrderState.PAID
    print("python token queue flow: ok")


if __name__ == "__main__":
    main()
    queue()
