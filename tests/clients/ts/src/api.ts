// The clients a frontend would make from the generated types: nothing here is written by hand
// about the API itself, every path, body, answer and code comes from `generated/api.d.ts`
// (made by openapi-typescript from the live /openapi.json).
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/api.js";

export type Schemas = components["schemas"];
export type ProblemCode = Schemas["ProblemCode"];

// The contract: `/api/admin/*` needs the bearer token `ADMIN_TOKEN`. Those paths are reachable
// only through `adminApi`, which cannot be made without a token.
type AdminPath = Extract<keyof paths, `/api/admin/${string}`>;

export function publicApi(baseUrl: string) {
  return createClient<Omit<paths, AdminPath>>({ baseUrl });
}

export function adminApi(baseUrl: string, token: string) {
  return createClient<Pick<paths, AdminPath>>({
    baseUrl,
    headers: { Authorization: `Bearer ${token}` },
  });
}

// What a buyer is told for each problem: a switch that the compiler checks covers every code
// the document lists (a new code breaks the build here until it is handled).
export function explain(problem: Schemas["Problem"]): string {
  const code = problem.code;
  switch (code) {
    case "insufficient_stock":
      return `only ${problem.available ?? 0} left`;
    case "buyer_limit_exceeded":
      return `you can hold ${problem.remaining ?? 0} more`;
    case "buyer_id_required":
      return "please sign in to buy this product";
    case "sale_not_started":
      return `the sale opens at ${problem.sale_starts_at ?? "a later time"}`;
    case "sale_ended":
      return "the sale has ended";
    case "no_refund_due":
      return "no refund is due for this order";
    case "idempotency_key_in_use":
      return "still working on it, retry shortly";
    case "hold_expired":
    case "hold_released":
    case "hold_not_active":
      return "your reservation is no longer active";
    case "product_not_found":
    case "hold_not_found":
    case "order_not_found":
    case "not_found":
      return "not found";
    case "malformed_request":
    case "validation_error":
      return (problem.errors ?? []).map((e) => `${e.field}: ${e.message}`).join("; ");
    case "unsupported_media_type":
    case "payload_too_large":
    case "method_not_allowed":
    case "hold_mismatch":
    case "idempotency_key_mismatch":
    case "invalid_signature":
    case "unauthorized":
      return `request refused (${code})`;
    case "rate_limited":
    case "unavailable":
      return "busy, retry later";
    case "internal":
      return "something went wrong on our side";
    default: {
      const unhandled: never = code;
      return unhandled;
    }
  }
}
