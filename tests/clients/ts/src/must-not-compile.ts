// Mistakes the generated types must catch. tests/clients/check.sh requires `tsc` to fail on
// exactly the lines that end in a MUST-FAIL comment, and nowhere else.
import { adminApi, holdApi, publicApi, type Schemas, ticketApi } from "./api.js";

const api = publicApi("http://127.0.0.1:8000");
const mine = holdApi("http://127.0.0.1:8000", "the-hold's-secret");
const queued = ticketApi("http://127.0.0.1:8000", "the-ticket's-secret");
adminApi("http://127.0.0.1:8000", "token");

export async function mistakes(problem: Schemas["Problem"]): Promise<string> {
  const hold = await mine.GET("/api/holds/{id}", { params: { path: { id: 1 } } });
  if (hold.data?.status === "actve") return "misspelled status"; // MUST-FAIL
  const ticket = await queued.GET("/api/queue/{id}", { params: { path: { id: 1 } } });
  if (ticket.data?.state === "admited") return "misspelled ticket state"; // MUST-FAIL
  // A hold without its secret: the public client has no such route.
  await api.GET("/api/holds/{id}", { params: { path: { id: 1 } } }); // MUST-FAIL
  // Nor does a hold's client make holds.
  await mine.POST("/api/holds", { body: { product_id: 1, qty: 1 } }); // MUST-FAIL
  switch (problem.code) {
    case "insufficent_stock": // MUST-FAIL
      return "misspelled code";
    default:
      break;
  }
  // An admin operation without its token: the public client does not have it.
  await api.POST("/api/admin/products", { body: { name: "x", price: "1.00", stock: 1 } }); // MUST-FAIL
  return "";
}
