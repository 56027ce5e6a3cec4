// A signed-in buyer's flow (`BUYER_AUTH=jwt`) through the generated client, against a live API
// (API_URL, ADMIN_TOKEN, BUYER_JWT_SECRET): the shop's identity provider signs a token (HS256
// here, with node's crypto), the buyer holds and orders with it, another buyer's token reaches
// nothing, and no token is a 401.
// Then the fair queue (a worker beside the API admits tickets), with tokens only: two buyers join
// a product with `queue` admission (201; joining again is a 200 with the same ticket), a buyer
// without a ticket and the one still waiting are refused a hold with 403 `admission_required`,
// the first ticket is polled until admitted, another buyer reads it as 404, the second buyer
// leaves, and the admitted buyer holds (the ticket reads `used`), orders and pays.
import { createHmac } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { adminApi, buyerApi, explain, publicApi, type Schemas } from "./api.js";

const baseUrl = process.env["API_URL"] ?? "http://127.0.0.1:8000";
const admin = adminApi(baseUrl, process.env["ADMIN_TOKEN"] ?? "");
const jwtSecret = process.env["BUYER_JWT_SECRET"] ?? "";

function check(ok: boolean, what: string): void {
  if (!ok) {
    throw new Error(`token flow failed: ${what}`);
  }
}

/** What the shop's identity provider gives a signed-in user: an HS256 JWT for `sub`. */
function tokenFor(sub: string): string {
  const b64 = (v: object) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + 600 })}`;
  return `${unsigned}.${createHmac("sha256", jwtSecret).update(unsigned).digest("base64url")}`;
}

async function main(): Promise<void> {
  const created = await admin.POST("/api/admin/products", {
    body: { name: "TypeScript token client", price: "5.00", stock: 4, per_buyer_limit: 2 },
  });
  if (created.data === undefined) throw new Error(`create product: ${created.response.status}`);
  const product = created.data;

  const ann = buyerApi(baseUrl, tokenFor("ann"));
  const hold = await ann.POST("/api/holds", {
    params: { header: { "Idempotency-Key": `ts-token-${product.id}` } },
    body: { product_id: product.id, qty: 2 },
  });
  if (hold.error !== undefined) throw new Error(`hold refused: ${explain(hold.error)}`);
  check(hold.data.buyer_id === "ann" && hold.data.client_secret === null, "the token's buyer, no secret");

  // The limit counts the token's buyer, whatever a body would claim.
  const more = await ann.POST("/api/holds", { body: { product_id: product.id, qty: 1 } });
  check(more.response.status === 409 && more.error?.code === "buyer_limit_exceeded", "limit per buyer");

  const bob = buyerApi(baseUrl, tokenFor("bob"));
  const peek = await bob.GET("/api/holds/{id}", { params: { path: { id: hold.data.hold_id } } });
  check(peek.response.status === 404, "another buyer's hold does not exist");

  // No token: 401 with a challenge, through a raw fetch (the typed public client has no such
  // route, which is the point).
  const anonymous = await fetch(`${baseUrl}/api/holds/${hold.data.hold_id}`);
  check(anonymous.status === 401 && anonymous.headers.get("WWW-Authenticate") !== null, "401 without a token");
  publicApi(baseUrl);

  const order = await ann.POST("/api/orders", { body: { hold_id: hold.data.hold_id } });
  if (order.error !== undefined) throw new Error(`order refused: ${explain(order.error)}`);
  check(order.data.buyer_id === "ann" && order.data.total_price === "10.00", "order of ann, 2 × 5.00");
  const read = await ann.GET("/api/orders/{id}", { params: { path: { id: order.data.order_id } } });
  check(read.data?.status === "pending", "ann reads her order");
  console.log("typescript token flow: ok");
}

/** The ticket once the worker has admitted it, read with its buyer's token every 200 ms for 15 s. */
async function admitted(buyer: ReturnType<typeof buyerApi>, id: number): Promise<Schemas["Ticket"]> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const read = await buyer.GET("/api/queue/{id}", { params: { path: { id } } });
    if (read.error !== undefined) throw new Error(`ticket ${id} unreadable: ${explain(read.error)}`);
    if (read.data.state === "admitted") return read.data;
    check(read.data.state === "waiting", `ticket ${id} ${read.data.state} before its admission`);
    if (Date.now() > deadline) throw new Error(`ticket ${id} not admitted within 15 s`);
    await sleep(200);
  }
}

async function queue(): Promise<void> {
  const created = await admin.POST("/api/admin/products", {
    body: {
      name: "TypeScript token queue",
      price: "20.00",
      stock: 1,
      admission: "queue",
      admission_window_seconds: 60,
    },
  });
  if (created.data === undefined) throw new Error(`create queue product: ${created.response.status}`);
  const product = created.data;
  const path = { id: product.id };

  // Ann joins first: the token says who she is, the body nothing.
  const ann = buyerApi(baseUrl, tokenFor("ann"));
  const joined = await ann.POST("/api/products/{id}/queue", { params: { path }, body: {} });
  if (joined.error !== undefined) throw new Error(`join refused: ${explain(joined.error)}`);
  check(joined.response.status === 201, `join: 201 expected, got ${joined.response.status}`);
  const ticket = joined.data;
  check(ticket.state === "waiting" || ticket.state === "admitted", `joined ${ticket.state}`);
  check(ticket.buyer_id === "ann" && ticket.client_secret === null, "the token's buyer, no secret");
  const again = await ann.POST("/api/products/{id}/queue", { params: { path }, body: {} });
  check(again.response.status === 200 && again.data?.ticket_id === ticket.ticket_id, "joined again: 200, same");

  // Bob joins behind her: one unit, taken by her admission, so he waits.
  const bob = buyerApi(baseUrl, tokenFor("bob"));
  const bobJoined = await bob.POST("/api/products/{id}/queue", { params: { path }, body: {} });
  if (bobJoined.error !== undefined) throw new Error(`bob's join refused: ${explain(bobJoined.error)}`);
  check(bobJoined.response.status === 201 && bobJoined.data.state === "waiting", "bob waits");

  // No ticket (carol never joined), a waiting ticket (bob's): 403, and the code says why.
  const carol = buyerApi(baseUrl, tokenFor("carol"));
  for (const [who, buyer] of [["carol", carol], ["bob", bob]] as const) {
    const refused = await buyer.POST("/api/holds", { body: { product_id: product.id, qty: 1 } });
    check(refused.response.status === 403, `${who}: 403 expected, got ${refused.response.status}`);
    if (refused.error === undefined) throw new Error(`${who} held without an admission`);
    switch (refused.error.code) {
      case "admission_required":
        check(refused.error.ticket_state === (who === "bob" ? "waiting" : undefined), `${who}'s ticket_state`);
        break;
      default:
        throw new Error(`unexpected ${refused.error.code}: ${explain(refused.error)}`);
    }
  }

  const admission = await admitted(ann, ticket.ticket_id);
  check(admission.position === 0 && admission.admission_expires_at !== null, "admitted: first, until a time");
  const peek = await bob.GET("/api/queue/{id}", { params: { path: { id: ticket.ticket_id } } });
  check(peek.response.status === 404 && peek.error?.code === "ticket_not_found", "another buyer gets 404");

  const left = await bob.DELETE("/api/queue/{id}", { params: { path: { id: bobJoined.data.ticket_id } } });
  if (left.error !== undefined) throw new Error(`leaving refused: ${explain(left.error)}`);
  check(left.response.status === 200 && left.data.state === "left", "bob left");

  // The admission makes one hold: the token's buyer's ticket is found by itself.
  const hold = await ann.POST("/api/holds", { body: { product_id: product.id, qty: 1 } });
  if (hold.error !== undefined) throw new Error(`admitted hold refused: ${explain(hold.error)}`);
  check(hold.response.status === 201 && hold.data.status === "active", "admitted hold");
  const used = await ann.GET("/api/queue/{id}", { params: { path: { id: ticket.ticket_id } } });
  check(used.data?.state === "used", `ticket used, got ${used.data?.state}`);

  const order = await ann.POST("/api/orders", { body: { hold_id: hold.data.hold_id } });
  if (order.error !== undefined) throw new Error(`order refused: ${explain(order.error)}`);
  check(order.data.status === "pending" && order.data.total_price === "20.00", "order pending");
  const paid = await publicApi(baseUrl).POST("/api/payments/webhook", {
    body: {
      idempotency_key: `ts-queue-pay-${order.data.order_id}`,
      order_id: order.data.order_id,
      status: "success",
    },
  });
  if (paid.error !== undefined) throw new Error(`webhook refused: ${explain(paid.error)}`);
  check(paid.data.order_status === "paid", "paid");
  console.log("typescript token queue flow: ok");
}

await main();
await queue();
