"""A signed-in buyer's flow (``BUYER_AUTH=jwt``) through the generated client, against a live
API (API_URL, ADMIN_TOKEN, BUYER_JWT_SECRET): the shop's identity provider signs a token (HS256,
with the standard library here), the buyer holds and orders with it through an
``AuthenticatedClient`` (the generated functions of buyer routes accept no other), another
buyer's token reaches nothing. Checked with ``mypy --strict``, then run."""

import base64
import hashlib
import hmac
import json
import os
import time

from flash_sale_client.api.admin import create_product
from flash_sale_client.api.holds import create_hold, get_hold
from flash_sale_client.api.orders import create_order, get_order
from flash_sale_client.client import AuthenticatedClient
from flash_sale_client.models import CreateHold, CreateOrder, NewProduct, OrderState, Problem, ProblemCode


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


if __name__ == "__main__":
    main()
