import Fastify from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiError, errorsPlugin } from "../src/fastify-errors.ts";
import { openApiPlugin, openApiRoute } from "../src/openapi.ts";

const app = Fastify({ logger: false });

beforeAll(async () => {
  await app.register(errorsPlugin);
  await app.register(openApiPlugin);
  app.get("/boom", async () => {
    throw new Error("password=hunter2 at db.ts:12");
  });
  app.get("/teapot", async () => {
    throw new ApiError(418, "No coffee here", { param: "drink", code: "teapot" });
  });
  app.get("/unavailable", async () => {
    throw new ApiError(503, "Queue unavailable");
  });
  // A real operation of openapi.yaml, validated from its schemas.
  app.route({ ...openApiRoute("POST", "/v1/chat/completions"), handler: async () => ({}) });
  app.route({ ...openApiRoute("POST", "/v1/runs"), handler: async () => ({}) });
  await app.ready();
});
afterAll(() => app.close());

describe("errorsPlugin", () => {
  it("hides the message and stack of unexpected errors", async () => {
    const response = await app.inject({ url: "/boom" });
    expect(response.statusCode).toBe(500);
    expect(response.json()).toEqual({
      error: { message: "Internal server error", type: "server_error", param: null, code: null },
    });
  });

  it("sends an ApiError's status, message, param and code", async () => {
    const response = await app.inject({ url: "/teapot" });
    expect(response.statusCode).toBe(418);
    expect(response.json()).toEqual({
      error: {
        message: "No coffee here",
        type: "invalid_request_error",
        param: "drink",
        code: "teapot",
      },
    });
    const unavailable = await app.inject({ url: "/unavailable" });
    expect(unavailable.statusCode).toBe(503);
    expect(unavailable.json().error).toMatchObject({
      message: "Queue unavailable",
      type: "service_unavailable",
    });
  });

  it("answers unknown routes with 404 in the same shape", async () => {
    const response = await app.inject({ url: "/nowhere?x=1" });
    expect(response.statusCode).toBe(404);
    expect(response.json().error).toMatchObject({
      message: "No route for GET /nowhere",
      type: "not_found_error",
    });
  });

  it("names the field of a validation failure", async () => {
    const post = (payload: object) =>
      app.inject({ method: "POST", url: "/v1/chat/completions", payload });
    const unknown = await app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: { name: "r", model: { preset: "tiny" }, datasets: [], learning_rate: 1 },
    });
    expect(unknown.statusCode).toBe(400);
    expect(unknown.json().error).toEqual({
      message: "Unknown field 'learning_rate'",
      type: "invalid_request_error",
      param: "learning_rate",
      code: "invalid_value",
    });
    const role = await post({ model: "m", messages: [{ role: "robot", content: "hi" }] });
    expect(role.json().error).toMatchObject({
      message: "'messages[0].role' must be one of: system, user, assistant",
      param: "messages[0].role",
    });
    const missing = await post({ messages: [{ role: "user", content: "hi" }] });
    expect(missing.json().error).toMatchObject({
      message: "Missing required field 'model'",
      param: "model",
    });
    const temperature = await post({
      model: "m",
      messages: [{ role: "user", content: "hi" }],
      temperature: 5,
    });
    expect(temperature.json().error).toMatchObject({
      message: "'temperature' must be <= 2",
      param: "temperature",
    });
  });
});
