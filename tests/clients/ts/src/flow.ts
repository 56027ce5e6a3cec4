// An anonymous buyer's whole flow (`BUYER_AUTH=none`) through the generated client, against a
// live API (API_URL, ADMIN_TOKEN): an operator adds a product, a buyer reads it, holds, reaches
// the hold with its `client_secret`, orders, the gateway pays by webhook, and a hold beyond the
// stock is refused with a 409 whose `code` is branched on; another secret reaches nothing.
import { adminApi, explain, holdApi, publicApi } from "./api.js";

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

await main();
