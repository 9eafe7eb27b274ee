// evaluateRun's arithmetic and requests, against a scripted api and inference service.
import { describe, expect, it } from "vitest";
import { createChatrlClient, evaluateRun, polite } from "../src/index.ts";
import { requestSeed } from "../src/eval.ts";

const RUN = "run_0123456789abcdef01234567";
type ChatBody = {
  model: string;
  messages: { content: string }[];
  seed: number;
  temperature: number;
  top_p: number;
};

/** A fake service: the sft model is kind on even seeds, the actor always, the EMA wrong. */
function scripted(opts: { summaries: boolean }) {
  const chats: ChatBody[] = [];
  const metricQueries: string[] = [];
  const json = (body: unknown) =>
    new Response(JSON.stringify(body), { headers: { "content-type": "application/json" } });
  const fetch = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);
    if (url.pathname === `/v1/runs/${RUN}`) {
      const stage = (kind: string, summary: Record<string, number>) => ({
        kind,
        ...(opts.summaries ? { summary } : {}),
      });
      return json({
        id: RUN,
        status: "succeeded",
        stages: [stage("sft", {}), stage("reward", { accuracy: 0.8 }), stage("ppo", { kl: 0.05 })],
      });
    }
    if (url.pathname === `/v1/runs/${RUN}/metrics`) {
      metricQueries.push(url.search);
      const name = url.searchParams.get("name");
      const stage = url.searchParams.get("stage");
      const values = name === "eval_accuracy" ? [0.5, 0.75] : [0.01, 0.07];
      return json({
        object: "list",
        data: values.map((value, step) => ({ stage, step, name, value })),
      });
    }
    if (url.pathname === "/v1/models") {
      return json({
        object: "list",
        data: [`run-${RUN}`, `run-${RUN}-ema`, `run-${RUN}-sft`, "run-other-sft"].map((id) => ({
          id,
        })),
      });
    }
    if (url.pathname === "/v1/chat/completions") {
      const body = (await request.json()) as ChatBody;
      chats.push(body);
      const p = polite.parsePrompt(body.messages[0].content)!;
      const answer =
        body.model === `run-${RUN}-sft`
          ? body.seed % 2 === 0
            ? polite.kindAnswer(p)
            : polite.curtAnswer(p)
          : body.model === `run-${RUN}`
            ? polite.kindAnswer(p)
            : `Happy to help! ${p.a} ${p.op} ${p.b} is 100.`;
      return json({ choices: [{ message: { role: "assistant", content: answer } }] });
    }
    return new Response("{}", { status: 404 });
  };
  const client = createChatrlClient({ baseUrl: "http://fake", fetch });
  return { client, chats, metricQueries };
}

describe("evaluateRun", () => {
  it("means the scorer over every sampled answer of every model, with the stages' summaries", async () => {
    const { client, chats, metricQueries } = scripted({ summaries: true });
    const report = await evaluateRun({ api: client, inference: client, runId: RUN, samples: 2 });
    expect(report).toEqual({
      run: RUN,
      task: "polite",
      prompts: 40,
      samples_per_prompt: 2,
      seed: 1,
      // Seeds alternate even/odd over (prompt, sample): half the SFT answers are kind.
      sft: { model: `run-${RUN}-sft`, score: 0.5, correct: 1 },
      actor: { model: `run-${RUN}`, score: 1, correct: 1 },
      ema: { model: `run-${RUN}-ema`, score: 1, correct: 0 },
      reward_accuracy: 0.8,
      final_kl: 0.05,
      actor_beats_sft: true,
    });
    expect(metricQueries).toEqual([]);
    expect(chats).toHaveLength(3 * 40 * 2);
  });

  it("samples every held-out prompt at temperature 1 with a seed of its own", async () => {
    const { client, chats } = scripted({ summaries: true });
    await evaluateRun({ api: client, inference: client, runId: RUN, samples: 3, seed: 9 });
    const sft = chats.filter((c) => c.model === `run-${RUN}-sft`);
    expect(sft).toHaveLength(120);
    expect(new Set(sft.map((c) => c.seed)).size).toBe(120);
    expect(new Set(sft.map((c) => c.messages[0].content))).toEqual(
      new Set(polite.HELD_OUT_PROMPTS.map((p) => p.text)),
    );
    for (const c of chats) {
      expect(c.temperature).toBe(1);
      expect(c.top_p).toBe(1);
    }
    // Seed 9, prompt 2, sample 1 of 3: 9,000,000 + 2·3 + 1.
    expect(requestSeed(9, 2, 3, 1)).toBe(9_000_007);
    expect(sft.map((c) => c.seed)).toContain(9_000_007);
  });

  it("falls back to the newest eval_accuracy and kl metrics when a stage has no summary", async () => {
    const { client, metricQueries } = scripted({ summaries: false });
    const report = await evaluateRun({ api: client, inference: client, runId: RUN, samples: 1 });
    expect(report.reward_accuracy).toBe(0.75);
    expect(report.final_kl).toBe(0.07);
    expect(metricQueries).toEqual(["?stage=reward&name=eval_accuracy", "?stage=ppo&name=kl"]);
  });
});
