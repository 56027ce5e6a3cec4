// An anonymous buyer's whole flow (`BUYER_AUTH=none`) through the generated client, against a
// live API (API_URL, ADMIN_TOKEN): an operator adds a product, a buyer reads it, holds, reaches
// the hold with its `client_secret`, orders, the gateway pays by webhook, and a hold beyond the
// stock is refused with a 409 whose `code` is branched on; another secret reaches nothing.
// Then the fair queue (a worker beside the API admits tickets): two buyers join a product with
// `queue` admission (the 201 carries the ticket's `client_secret`, joining again is a 200 with
// the same ticket), a hold without a ticket is 403 `admission_required`, the first ticket is
// polled with its secret until it is admitted, another secret reads 404, a hold naming the
// ticket without its secret is 403, with it (createHold's `Client-Secret` header) a hold of the
// ticket's buyer that uses the ticket; it is ordered and paid; the second buyer leaves.
import { setTimeout as sleep } from "node:timers/promises";
import { adminApi, explain, holdApi, publicApi, type Schemas, ticketApi } from "./api.js";

const baseUrl = process.env["API_URL"] ?? "http://127.0.0.1:8000";
const token = process.env["ADMIN_TOKEN"] ?? "";
const api = publicApi(baseUrl);
const admin = adminApi(baseUrl, token);

function check(ok: boolean, what: string): void {
  if (!ok) {
    throw new Error(`flow failed: ${what}`);
  }
}

async function main(): Promise<void> {
  const created = await admin.POST("/api/admin/products", {
    body: { name: "TypeScript client", price: "12.50", stock: 3 },
  });
  check(created.response.status === 201 && created.data !== undefined, `create product: ${created.response.status}`);
  const product = created.data;
  if (product === undefined) return;
  check(created.response.headers.get("Location") === `/api/products/${product.id}`, "Location of the product");

  const read = await api.GET("/api/products/{id}", { params: { path: { id: product.id } } });
  check(read.data?.available_stock === 3, "product read back");

  const hold = await api.POST("/api/holds", {
    params: { header: { "Idempotency-Key": `ts-${product.id}` } },
    body: { product_id: product.id, qty: 2 },
  });
  if (hold.error !== undefined) throw new Error(`hold refused: ${explain(hold.error)}`);
  check(hold.data.status === "active", "hold is active");
  check(hold.response.headers.get("X-Request-Id") !== null, "X-Request-Id readable");

  const replay = await api.POST("/api/holds", {
    params: { header: { "Idempotency-Key": `ts-${product.id}` } },
    body: { product_id: product.id, qty: 2 },
  });
  check(replay.response.headers.get("Idempotent-Replayed") === "true", "replayed");
  check(replay.data?.hold_id === hold.data.hold_id, "same hold");

  // One unit is left: asking for two is a 409, and the code says why.
  const refused = await api.POST("/api/holds", { body: { product_id: product.id, qty: 2 } });
  check(refused.response.status === 409, `409 expected, got ${refused.response.status}`);
  if (refused.error === undefined) throw new Error("a second hold of 2 was granted");
  const problem = refused.error;
  switch (problem.code) {
    case "insufficient_stock":
      check(problem.available === 1, "available is 1");
      break;
    case "idempotency_key_in_use":
      throw new Error("no key was sent");
    default:
      throw new Error(`unexpected ${problem.code}: ${explain(problem)}`);
  }

  // The hold is the buyer's by its secret, given once, in the 201.
  const secret = hold.data.client_secret;
  if (secret === null) throw new Error("no client_secret in an anonymous buyer's hold");
  check(replay.data?.client_secret === secret, "the replay carries the same secret");
  const mine = holdApi(baseUrl, secret);
  const held = await mine.GET("/api/holds/{id}", { params: { path: { id: hold.data.hold_id } } });
  check(held.data?.status === "active" && held.data.client_secret === null, "hold read back, no secret");
  const stranger = holdApi(baseUrl, "not-the-secret");
  const guessed = await stranger.GET("/api/holds/{id}", { params: { path: { id: hold.data.hold_id } } });
  check(guessed.response.status === 404 && guessed.error?.code === "hold_not_found", "a stranger gets 404");

  const order = await mine.POST("/api/orders", { body: { hold_id: hold.data.hold_id } });
  if (order.error !== undefined) throw new Error(`order refused: ${explain(order.error)}`);
  check(order.response.status === 201 && order.data.status === "pending", "order pending");

  const paid = await api.POST("/api/payments/webhook", {
    body: { idempotency_key: `ts-pay-${order.data.order_id}`, order_id: order.data.order_id, status: "success" },
  });
  if (paid.error !== undefined) throw new Error(`webhook refused: ${explain(paid.error)}`);
  check(paid.data.order_status === "paid" && !paid.data.duplicate, "paid");

  const after = await mine.GET("/api/orders/{id}", { params: { path: { id: order.data.order_id } } });
  check(after.data?.status === "paid", "order reads paid");
  const stock = await api.GET("/api/products/{id}", { params: { path: { id: product.id } } });
  check(stock.data?.stock === 1 && stock.data.available_stock === 1, "stock 1, available 1");
  console.log("typescript flow: ok");
}

/** The ticket once the worker has admitted it, read with its secret every 200 ms for 15 s. */
async function admitted(mine: ReturnType<typeof ticketApi>, id: number): Promise<Schemas["Ticket"]> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const read = await mine.GET("/api/queue/{id}", { params: { path: { id } } });
    if (read.error !== undefined) throw new Error(`ticket ${id} unreadable: ${explain(read.error)}`);
    if (read.data.state === "admitted") return read.data;
    check(read.data.state === "waiting", `ticket ${id} ${read.data.state} before its admission`);
    if (Date.now() > deadline) throw new Error(`ticket ${id} not admitted within 15 s`);
    await sleep(200);
  }
}

async function queue(): Promise<void> {
  const created = await admin.POST("/api/admin/products", {
    body: { name: "TypeScript queue", price: "20.00", stock: 1, admission: "queue", admission_window_seconds: 60 },
  });
  if (created.data === undefined) throw new Error(`create queue product: ${created.response.status}`);
  const product = created.data;
  check(product.admission === "queue", "a queue product");
  const path = { id: product.id };

  // Ann joins first; her ticket is reached by the secret of this 201 (and of its retry).
  const key = `ts-queue-ann-${product.id}`;
  const joined = await api.POST("/api/products/{id}/queue", {
    params: { path, header: { "Idempotency-Key": key } },
    body: { buyer_id: "ann" },
  });
  if (joined.error !== undefined) throw new Error(`join refused: ${explain(joined.error)}`);
  check(joined.response.status === 201, `join: 201 expected, got ${joined.response.status}`);
  const ticket = joined.data;
  check(ticket.state === "waiting" || ticket.state === "admitted", `joined ${ticket.state}`);
  const secret = ticket.client_secret;
  if (secret === null) throw new Error("no client_secret in an anonymous buyer's ticket");
  const again = await api.POST("/api/products/{id}/queue", {
    params: { path, header: { "Idempotency-Key": key } },
    body: { buyer_id: "ann" },
  });
  check(again.response.status === 200 && again.data?.ticket_id === ticket.ticket_id, "joined again: 200, same");
  check(again.data?.client_secret === secret, "the retry carries the same secret");

  // Bob joins behind her: one unit, taken by her admission, so he waits.
  const bobJoined = await api.POST("/api/products/{id}/queue", {
    params: { path, header: { "Idempotency-Key": `ts-queue-bob-${product.id}` } },
    body: { buyer_id: "bob" },
  });
  if (bobJoined.error !== undefined) throw new Error(`bob's join refused: ${explain(bobJoined.error)}`);
  check(bobJoined.response.status === 201 && bobJoined.data.state === "waiting", "bob waits");
  const bobSecret = bobJoined.data.client_secret;
  if (bobSecret === null) throw new Error("no client_secret in bob's ticket");

  // A hold without a ticket: 403, and the code says why.
  const refused = await api.POST("/api/holds", { body: { product_id: product.id, qty: 1 } });
  check(refused.response.status === 403, `403 expected, got ${refused.response.status}`);
  if (refused.error === undefined) throw new Error("a hold without a ticket was granted");
  switch (refused.error.code) {
    case "admission_required":
      check(refused.error.ticket_state === undefined, "no ticket named, none told");
      break;
    default:
      throw new Error(`unexpected ${refused.error.code}: ${explain(refused.error)}`);
  }

  const mine = ticketApi(baseUrl, secret);
  const admission = await admitted(mine, ticket.ticket_id);
  check(admission.position === 0 && admission.admission_expires_at !== null, "admitted: first, until a time");
  for (const other of [ticketApi(baseUrl, "not-the-secret"), ticketApi(baseUrl, bobSecret)]) {
    const peek = await other.GET("/api/queue/{id}", { params: { path: { id: ticket.ticket_id } } });
    check(peek.response.status === 404 && peek.error?.code === "ticket_not_found", "a stranger gets 404");
  }

  // The admitted hold needs the ticket's secret as createHold's `Client-Secret` header.
  const unproven = await api.POST("/api/holds", {
    body: { product_id: product.id, qty: 1, ticket_id: ticket.ticket_id },
  });
  check(unproven.response.status === 403 && unproven.error?.code === "admission_required", "no secret, no hold");
  const still = await mine.GET("/api/queue/{id}", { params: { path: { id: ticket.ticket_id } } });
  check(still.data?.state === "admitted", "the admission is still unused");
  const hold = await api.POST("/api/holds", {
    params: { header: { "Client-Secret": secret } },
    body: { product_id: product.id, qty: 1, ticket_id: ticket.ticket_id },
  });
  if (hold.error !== undefined) throw new Error(`admitted hold refused: ${explain(hold.error)}`);
  check(hold.response.status === 201 && hold.data.buyer_id === "ann", "the hold is the ticket's buyer's");
  const used = await mine.GET("/api/queue/{id}", { params: { path: { id: ticket.ticket_id } } });
  check(used.data?.state === "used", "one hold per admission: the ticket is used");
  const holdSecret = hold.data.client_secret;
  if (holdSecret === null) throw new Error("no client_secret in the admitted hold");
  const order = await holdApi(baseUrl, holdSecret).POST("/api/orders", { body: { hold_id: hold.data.hold_id } });
  if (order.error !== undefined) throw new Error(`order refused: ${explain(order.error)}`);
  const paid = await api.POST("/api/payments/webhook", {
    body: { idempotency_key: `ts-queue-pay-${order.data.order_id}`, order_id: order.data.order_id, status: "success" },
  });
  if (paid.error !== undefined) throw new Error(`webhook refused: ${explain(paid.error)}`);
  check(paid.data.order_status === "paid", "the queued buyer's order is paid");

  const left = await ticketApi(baseUrl, bobSecret).DELETE("/api/queue/{id}", {
    params: { path: { id: bobJoined.data.ticket_id } },
  });
  if (left.error !== undefined) throw new Error(`leaving refused: ${explain(left.error)}`);
  check(left.response.status === 200 && left.data.state === "left" && left.data.position === null, "bob left");
  console.log("typescript queue flow: ok");
}

/**
 * A cart: a ticket and a parking pass held together, a second cart wanting the gone pass
 * refused with its line named, the hold extended, ordered as one and paid for its total.
 */
async function cart(): Promise<void> {
  const ids: number[] = [];
  for (const [name, price, stock] of [["TS cart ticket", "40.00", 5], ["TS cart parking", "7.25", 1]] as const) {
    const made = await admin.POST("/api/admin/products", { body: { name, price, stock } });
    if (made.data === undefined) throw new Error(`create ${name}: ${made.response.status}`);
    ids.push(made.data.id);
  }
  const [ticket, parking] = ids as [number, number];
  const held = await api.POST("/api/holds", {
    body: { lines: [{ product_id: parking, qty: 1 }, { product_id: ticket, qty: 2 }] },
  });
  if (held.error !== undefined) throw new Error(`cart refused: ${explain(held.error)}`);
  check(held.data.total_price === "87.25" && held.data.lines?.length === 2, "cart: two lines, 87.25");
  const refused = await api.POST("/api/holds", {
    body: { lines: [{ product_id: ticket, qty: 1 }, { product_id: parking, qty: 1 }] },
  });
  if (refused.error === undefined) throw new Error("a cart beyond the stock was granted");
  const line = refused.error.lines?.[0];
  check(
    refused.response.status === 409 && line?.product_id === parking && line.code === "insufficient_stock",
    "the refusal names the parking line",
  );
  const secret = held.data.client_secret;
  if (secret === null) throw new Error("no client_secret in the cart");
  const mine = holdApi(baseUrl, secret);
  const path = { id: held.data.hold_id };
  const extended = await mine.POST("/api/holds/{id}/extend", { params: { path } });
  if (extended.error !== undefined) throw new Error(`extension refused: ${explain(extended.error)}`);
  check(extended.data.status === "active" && extended.data.lines?.length === 2, "extended, whole");
  const order = await mine.POST("/api/orders", { body: { hold_id: held.data.hold_id } });
  if (order.error !== undefined) throw new Error(`cart order refused: ${explain(order.error)}`);
  check(order.data.total_price === "87.25" && order.data.lines?.length === 2, "one order of the cart");
  const paid = await api.POST("/api/payments/webhook", {
    body: {
      idempotency_key: `ts-cart-pay-${order.data.order_id}`,
      order_id: order.data.order_id,
      status: "success",
      amount: "87.25",
    },
  });
  if (paid.error !== undefined) throw new Error(`cart payment refused: ${explain(paid.error)}`);
  check(paid.data.order_status === "paid", "the cart is paid");
  const left = await api.GET("/api/products/{id}", { params: { path: { id: ticket } } });
  check(left.data?.stock === 3, "two tickets sold");
  console.log("typescript cart flow: ok");
}

await main();
await queue();
await cart();
