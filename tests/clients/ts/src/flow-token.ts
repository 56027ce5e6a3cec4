// A signed-in buyer's flow (`BUYER_AUTH=jwt`) through the generated client, against a live API
// (API_URL, ADMIN_TOKEN, BUYER_JWT_SECRET): the shop's identity provider signs a token (HS256
// here, with node's crypto), the buyer holds and orders with it, another buyer's token reaches
// nothing, and no token is a 401.
import { createHmac } from "node:crypto";
import { adminApi, buyerApi, explain, publicApi } from "./api.js";

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

await main();
