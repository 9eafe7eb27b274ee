import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestApi, type TestApi } from "./helpers.ts";

let api: TestApi;

beforeAll(async () => {
  api = await startTestApi({ CHATRL_API_KEYS: "key-alpha,key-beta" });
});
afterAll(async () => {
  await api?.close();
});

describe("with API keys configured", () => {
  it("refuses requests without a key or with a wrong one, in the error shape", async () => {
    for (const headers of [
      {},
      { authorization: "Bearer nope" },
      { authorization: "Basic a2V5LWFscGhh" },
    ]) {
      const response = await api.app.inject({ url: "/v1/runs", headers });
      expect(response.statusCode).toBe(401);
      expect(response.headers["www-authenticate"]).toMatch(/^Bearer/);
      expect(response.json()).toEqual({
        error: {
          message: "Missing or invalid API key: send 'Authorization: Bearer <key>'",
          type: "authentication_error",
          param: null,
          code: "invalid_api_key",
        },
      });
    }
  });

  it("accepts every configured key", async () => {
    for (const key of ["key-alpha", "key-beta"]) {
      const response = await api.app.inject({
        url: "/v1/runs",
        headers: { authorization: `Bearer ${key}` },
      });
      expect(response.statusCode).toBe(200);
    }
  });

  it("tags every answer with an x-request-id, keeping the caller's", async () => {
    const refused = await api.app.inject({ url: "/v1/runs" });
    expect(refused.headers["x-request-id"]).toMatch(/^req_[0-9a-f]{24}$/);
    const given = await api.app.inject({
      url: "/healthz",
      headers: { "x-request-id": "trace-42" },
    });
    expect(given.headers["x-request-id"]).toBe("trace-42");
  });

  it("serves the dashboard page without a key, while the costs it charts need one", async () => {
    const page = await api.app.inject({ url: "/dashboard" });
    expect(page.statusCode).toBe(200);
    expect(page.headers["content-type"]).toBe("text/html; charset=utf-8");
    expect(page.body).toContain("/dashboard/assets/dashboard.js");
    const script = await api.app.inject({ url: "/dashboard/assets/costs.js" });
    expect(script.statusCode).toBe(200);
    expect(script.body).toContain("/v1/dashboard/costs");
    expect((await api.app.inject({ url: "/v1/dashboard/costs" })).statusCode).toBe(401);
  });

  it("keeps the health routes public", async () => {
    expect((await api.app.inject({ url: "/healthz" })).statusCode).toBe(200);
    expect((await api.app.inject({ url: "/readyz" })).json()).toEqual({
      status: "ready",
      postgres: "ok",
      redis: "ok",
    });
  });
});

describe("errors", () => {
  const auth = { authorization: "Bearer key-alpha" };

  it("answers unknown routes with 404 in the error shape", async () => {
    const response = await api.app.inject({ url: "/v1/nothing-here", headers: auth });
    expect(response.statusCode).toBe(404);
    expect(response.json().error).toMatchObject({ type: "not_found_error", code: "unknown_route" });
  });

  it("answers a body that is not JSON with 415 or 400, never a stack trace", async () => {
    const text = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      headers: { ...auth, "content-type": "text/plain" },
      payload: "train please",
    });
    expect(text.statusCode).toBe(415);
    expect(text.json().error.code).toBe("unsupported_media_type");

    const broken = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      headers: { ...auth, "content-type": "application/json" },
      payload: '{"name": ',
    });
    expect(broken.statusCode).toBe(400);
    expect(broken.json().error.code).toBe("invalid_json");
    expect(broken.body).not.toMatch(/node_modules|\.js:\d+/);
  });
});

describe("openapi.yaml", () => {
  it("has a route in the api for every operation outside the inference section", async () => {
    const { openApiDocument } = await import("@chatrl/contracts");
    const operations = Object.entries(openApiDocument.paths).flatMap(([url, methods]) =>
      Object.entries(methods)
        .filter(([, op]) => !(op as { tags?: string[] }).tags?.includes("inference"))
        .map(([method]) => ({
          method: method.toUpperCase(),
          url: url.replace(/\{(\w+)\}/g, ":$1"),
        })),
    );
    expect(operations.length).toBe(20);
    for (const route of operations) {
      expect(api.app.hasRoute(route as { method: "GET"; url: string }), JSON.stringify(route)).toBe(
        true,
      );
    }
  });
});
