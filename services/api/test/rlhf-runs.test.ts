// POST /v1/runs for the reward and PPO stages: sub-pipelines, PPO's starting checkpoints, the
// data routing rule, step estimates, warnings, and what GET returns of them.
import { finishStage, recordStageData, startStage } from "@chatrl/db";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  earlierRun,
  startTestApi,
  type TestApi,
  uploadDataset,
  uploadRlhfDatasets,
  waitForJobs,
} from "./helpers.ts";

let api: TestApi;
let supervisedId: string; // 40 supervised rows
let preferenceId: string; // 40 preference rows
let sftCheckpoint: string; // role sft, context 256
let rewardCheckpoint: string; // role reward, context 256
let criticCheckpoint: string; // role critic

beforeAll(async () => {
  api = await startTestApi();
  ({ supervisedId, preferenceId } = await uploadRlhfDatasets(api.app, 40));
  // Checkpoints of an earlier run, as a finished SFT + reward run leaves them.
  const save = await earlierRun(api.database.db.prisma);
  const config = { contextLength: 256 };
  sftCheckpoint = await save(0, "sft", config);
  rewardCheckpoint = await save(1, "reward", config);
  criticCheckpoint = await save(1, "critic", config);
});
afterAll(async () => {
  await api?.close();
});

/** Supervised rows feed sft (when the run trains it), preference rows reward and ppo. */
function body(extra: Record<string, unknown> = {}) {
  const stages = (extra.stages as object | undefined) ?? { sft: {}, reward: {}, ppo: {} };
  return {
    name: "rlhf",
    model: { preset: "tiny" },
    datasets: [
      ...("sft" in stages ? [{ id: supervisedId, stages: ["sft"] }] : []),
      { id: preferenceId, stages: ["reward", "ppo"] },
    ],
    stages,
    ...extra,
  };
}

/** POST /v1/runs; a created run once its jobs are in BullMQ too (they follow the answer). */
async function postRun(payload: unknown, headers: Record<string, string> = {}) {
  const response = await api.app.inject({
    method: "POST",
    url: "/v1/runs",
    payload: payload as object,
    headers,
  });
  if (response.statusCode === 201) await waitForJobs(api.queues, response.json());
  return response;
}

async function allJobIds(): Promise<string[]> {
  const states = ["waiting", "waiting-children", "active", "delayed", "completed", "failed"];
  const ids: string[] = [];
  for (const queue of Object.values(api.queues)) {
    for (const job of await queue.getJobs(states as never)) ids.push(job.id as string);
  }
  return ids.sort();
}

/** A refused run: the status, the param the error names, and nothing stored or queued. */
async function expectRefused(payload: unknown, status: number, param: string, message: RegExp) {
  const prisma = api.database.db.prisma;
  const runsBefore = await prisma.run.count();
  const jobsBefore = await allJobIds();
  const response = await postRun(payload);
  expect(response.statusCode, response.body).toBe(status);
  expect(response.json().error.param).toBe(param);
  expect(response.json().error.message).toMatch(message);
  expect(await prisma.run.count()).toBe(runsBefore);
  expect(await allJobIds()).toEqual(jobsBefore);
}

describe("sub-pipelines", () => {
  it("trains all three stages: three stage rows and one flow whose ppo job waits for sft and reward", async () => {
    const response = await postRun(body());
    expect(response.statusCode, response.body).toBe(201);
    const run = response.json();
    expect(run.stages.map((s: { kind: string }) => s.kind)).toEqual(["sft", "reward", "ppo"]);
    expect(run.warnings).toEqual([]);
    const [sft, reward, ppo] = run.stages;
    for (const stage of run.stages) {
      expect(stage).toMatchObject({ examples_truncated: 0, examples_dropped: 0, summary: {} });
    }

    const ppoJob = await api.queues.ppo.getJob(ppo.id);
    expect(await ppoJob?.getState()).toBe("waiting-children");
    expect(ppoJob?.data).toEqual({ runId: run.id, stageId: ppo.id, kind: "ppo" });
    const children = await ppoJob?.getDependencies();
    expect([...(children?.unprocessed ?? [])].sort()).toEqual(
      [`${api.redis.prefix}:sft:${sft.id}`, `${api.redis.prefix}:reward:${reward.id}`].sort(),
    );
    for (const [queue, stage] of [
      [api.queues.sft, sft],
      [api.queues.reward, reward],
    ] as const) {
      const job = await queue.getJob(stage.id);
      expect(job?.parent?.id).toBe(ppo.id);
      expect(job?.opts.failParentOnFailure).toBe(true);
    }
  });

  it("stores every default, so GET returns the run as submitted and the spec round-trips", async () => {
    const run = (await postRun(body({ name: "defaults" }))).json();
    expect((await api.app.inject({ url: `/v1/runs/${run.id}` })).json()).toEqual(run);
    const stored = await api.database.db.prisma.run.findUniqueOrThrow({ where: { id: run.id } });
    expect(stored.spec).toMatchObject({
      data_split: [2, 4, 4],
      datasets: [
        { id: supervisedId, weight: 1, stages: ["sft"] },
        { id: preferenceId, weight: 1, stages: ["reward", "ppo"] },
      ],
      stages: {
        sft: { epochs: 1, batch_size: 8, learning_rate: 1e-3, max_seq_len: 128 },
        reward: {
          epochs: 1,
          batch_size: 8,
          learning_rate: 5e-5,
          eval_fraction: 0.1,
          eval_every: 25,
        },
        ppo: {
          per_device_generation_batch_size: 16,
          per_device_training_batch_size: 16,
          actor_learning_rate: 9.65e-6,
          critic_learning_rate: 5e-6,
          kl_ctl: 0.1,
          unsup_coef: 27.8,
          enable_ema: false,
          // The tiny preset's context is 128: half of it each.
          max_prompt_seq_len: 64,
          max_answer_seq_len: 64,
        },
      },
    });
    const spec = stored.spec as { stages: Record<string, object> };
    for (const stage of Object.values(spec.stages)) expect(stage).not.toHaveProperty("max_steps");
  });

  it("trains reward alone, and sft with reward, as jobs without a parent", async () => {
    const rewardOnly = await postRun(body({ stages: { reward: { max_steps: 3 } } }));
    expect(rewardOnly.statusCode, rewardOnly.body).toBe(201);
    const [reward] = rewardOnly.json().stages;
    expect(rewardOnly.json().stages).toHaveLength(1);
    expect(reward).toMatchObject({ kind: "reward", max_steps: 3 });
    expect(await (await api.queues.reward.getJob(reward.id))?.getState()).toBe("waiting");

    const two = await postRun(body({ stages: { sft: {}, reward: {} } }));
    expect(two.statusCode, two.body).toBe(201);
    for (const stage of two.json().stages) {
      const job = await api.queues[stage.kind as "sft" | "reward"].getJob(stage.id);
      expect(job?.parent).toBeUndefined();
      expect(await job?.getState()).toBe("waiting");
    }
  });

  it("trains PPO alone from the checkpoints of earlier runs, fitting its lengths to their context", async () => {
    const response = await postRun(
      body({
        datasets: [{ id: preferenceId }],
        stages: {
          ppo: { sft_checkpoint_id: sftCheckpoint, reward_checkpoint_id: rewardCheckpoint },
        },
      }),
    );
    expect(response.statusCode, response.body).toBe(201);
    const run = response.json();
    expect(run.stages.map((s: { kind: string }) => s.kind)).toEqual(["ppo"]);
    // 40 prompts (the reward and sft shares count as 0), 16 per step.
    expect(run.stages[0].max_steps).toBe(Math.ceil(40 / 16));
    expect(await (await api.queues.ppo.getJob(run.stages[0].id))?.getState()).toBe("waiting");
    const stored = await api.database.db.prisma.run.findUniqueOrThrow({ where: { id: run.id } });
    expect(stored.spec).toMatchObject({
      stages: {
        ppo: {
          sft_checkpoint_id: sftCheckpoint,
          reward_checkpoint_id: rewardCheckpoint,
          max_prompt_seq_len: 128,
          max_answer_seq_len: 128,
        },
      },
    });
  });

  it("trains PPO after an sft stage from a reward checkpoint, and after a reward stage from an sft checkpoint", async () => {
    const withSft = await postRun(
      body({ stages: { sft: {}, ppo: { reward_checkpoint_id: rewardCheckpoint } } }),
    );
    expect(withSft.statusCode, withSft.body).toBe(201);
    expect(withSft.json().stages.map((s: { kind: string }) => s.kind)).toEqual(["sft", "ppo"]);
    const withReward = await postRun(
      body({ stages: { reward: {}, ppo: { sft_checkpoint_id: sftCheckpoint } } }),
    );
    expect(withReward.statusCode, withReward.body).toBe(201);
    expect(withReward.json().stages.map((s: { kind: string }) => s.kind)).toEqual([
      "reward",
      "ppo",
    ]);
  });

  it("refuses a PPO stage missing a parent, or given both a parent stage and its checkpoint", async () => {
    await expectRefused(
      body({ stages: { ppo: { reward_checkpoint_id: rewardCheckpoint } } }),
      422,
      "stages.ppo.sft_checkpoint_id",
      /PPO without a sft stage in the same run needs stages.ppo.sft_checkpoint_id/,
    );
    await expectRefused(
      body({ stages: { sft: {}, ppo: {} } }),
      422,
      "stages.ppo.reward_checkpoint_id",
      /role reward/,
    );
    await expectRefused(
      body({ stages: { sft: {}, reward: {}, ppo: { sft_checkpoint_id: sftCheckpoint } } }),
      422,
      "stages.ppo.sft_checkpoint_id",
      /this run trains the sft stage/,
    );
    await expectRefused(
      body({ stages: { sft: {}, reward: {}, ppo: { reward_checkpoint_id: rewardCheckpoint } } }),
      422,
      "stages.ppo.reward_checkpoint_id",
      /this run trains the reward stage/,
    );
  });

  it("answers 404 for an unknown starting checkpoint and 422 naming both roles for one of the wrong role", async () => {
    const missing = `ckpt_${"e".repeat(24)}`;
    const ppoAlone = (ppo: Record<string, string>) =>
      body({ datasets: [{ id: preferenceId }], stages: { ppo } });
    await expectRefused(
      ppoAlone({ sft_checkpoint_id: missing, reward_checkpoint_id: rewardCheckpoint }),
      404,
      "stages.ppo.sft_checkpoint_id",
      /No checkpoint with id/,
    );
    await expectRefused(
      ppoAlone({ sft_checkpoint_id: sftCheckpoint, reward_checkpoint_id: missing }),
      404,
      "stages.ppo.reward_checkpoint_id",
      /No checkpoint with id/,
    );
    await expectRefused(
      ppoAlone({ sft_checkpoint_id: sftCheckpoint, reward_checkpoint_id: criticCheckpoint }),
      422,
      "stages.ppo.reward_checkpoint_id",
      /has role critic; .* needs a checkpoint of role reward/,
    );
    await expectRefused(
      ppoAlone({ sft_checkpoint_id: rewardCheckpoint, reward_checkpoint_id: rewardCheckpoint }),
      422,
      "stages.ppo.sft_checkpoint_id",
      /has role reward; .* needs a checkpoint of role sft or actor/,
    );
    await expectRefused(
      body({ stages: { reward: { model: { checkpoint_id: missing } } } }),
      404,
      "stages.reward.model.checkpoint_id",
      /No checkpoint/,
    );
  });
});

describe("hyper-parameters", () => {
  it("refuses unknown fields and values out of range with 400 naming the field", async () => {
    const ppo = (values: Record<string, unknown>) =>
      body({ stages: { sft: {}, reward: {}, ppo: values } });
    await expectRefused(ppo({ kl_coef: 0.1 }), 400, "stages.ppo.kl_coef", /Unknown field/);
    await expectRefused(ppo({ cliprange: 2 }), 400, "stages.ppo.cliprange", /<= 1/);
    await expectRefused(ppo({ gamma: 1.5 }), 400, "stages.ppo.gamma", /<= 1/);
    await expectRefused(ppo({ ema_beta: 1 }), 400, "stages.ppo.ema_beta", /< 1/);
    await expectRefused(ppo({ temperature: 0 }), 400, "stages.ppo.temperature", /> 0/);
    await expectRefused(ppo({ ppo_epochs: 0 }), 400, "stages.ppo.ppo_epochs", />= 1/);
    await expectRefused(ppo({ kl_ctl: -1 }), 400, "stages.ppo.kl_ctl", />= 0/);
    await expectRefused(
      ppo({ adaptive_kl: { target: 6 } }),
      400,
      "stages.ppo.adaptive_kl.horizon",
      /Missing required field/,
    );
    const reward = (values: Record<string, unknown>) => body({ stages: { reward: values } });
    await expectRefused(reward({ eval_fraction: 1 }), 400, "stages.reward.eval_fraction", /< 1/);
    await expectRefused(reward({ eval_fraction: 0 }), 400, "stages.reward.eval_fraction", /> 0/);
    await expectRefused(reward({ batch_size: 0 }), 400, "stages.reward.batch_size", />= 1/);
    await expectRefused(
      reward({ model: { preset: "tiny", checkpoint_id: sftCheckpoint } }),
      400,
      "stages.reward.model",
      /exactly one of/,
    );
    const datasets = (stages: unknown) => body({ datasets: [{ id: preferenceId, stages }] });
    await expectRefused(datasets([]), 400, "datasets[0].stages", /fewer than 1/);
    await expectRefused(datasets(["sft", "sft"]), 400, "datasets[0].stages", /duplicate/);
    await expectRefused(datasets(["dpo"]), 400, "datasets[0].stages[0]", /must be one of/);
  });

  it("refuses with 422 lengths past a model's context and batches that do not fit together", async () => {
    await expectRefused(
      body({ stages: { reward: { max_seq_len: 200 } } }),
      422,
      "stages.reward.max_seq_len",
      /longer than the reward model's context of 128 tokens/,
    );
    // A larger reward model than the actor is fine; its own length checks against its context.
    const smallReward = await postRun(
      body({ stages: { reward: { model: { preset: "small" }, max_seq_len: 200 } } }),
    );
    expect(smallReward.statusCode, smallReward.body).toBe(201);
    await expectRefused(
      body({ stages: { sft: {}, reward: {}, ppo: { max_answer_seq_len: 100 } } }),
      422,
      "stages.ppo.max_answer_seq_len",
      /64 \+ max_answer_seq_len 100 = 164 tokens do not fit the context of 128/,
    );
    await expectRefused(
      body({ stages: { sft: {}, reward: {}, ppo: { max_prompt_seq_len: 100 } } }),
      422,
      "stages.ppo.max_prompt_seq_len",
      /do not fit the context of 128/,
    );
    await expectRefused(
      body({ stages: { sft: {}, reward: {}, ppo: { per_device_training_batch_size: 32 } } }),
      422,
      "stages.ppo.per_device_training_batch_size",
      /larger than the 16 answers each step generates/,
    );
    await expectRefused(
      body({
        stages: {
          sft: {},
          reward: {},
          ppo: { kl_ctl: 0, adaptive_kl: { target: 6, horizon: 10000 } },
        },
      }),
      422,
      "stages.ppo.kl_ctl",
      /adaptive_kl/,
    );
    const fits = await postRun(
      body({
        stages: { sft: {}, reward: {}, ppo: { max_prompt_seq_len: 96, max_answer_seq_len: 32 } },
      }),
    );
    expect(fits.statusCode, fits.body).toBe(201);
  });

  it("estimates each stage's steps from epochs when max_steps is absent, and takes max_steps as given", async () => {
    const response = await postRun(
      body({
        data_split: [1, 1, 1],
        stages: {
          sft: { epochs: 3, batch_size: 8 },
          reward: { epochs: 2, batch_size: 4, eval_fraction: 0.25 },
          ppo: {
            epochs: 1,
            per_device_generation_batch_size: 4,
            per_device_training_batch_size: 4,
          },
        },
      }),
    );
    expect(response.statusCode, response.body).toBe(201);
    const steps = response.json().stages.map((s: { max_steps: number }) => s.max_steps);
    // sft: all 40 supervised rows, 3 epochs of 8: 15. The preference rows split 1:1 between
    // reward and ppo: 20 each. reward: 20 - 5 held out = 15 pairs, 2 epochs of 4: 8. ppo: 20 / 4.
    expect(steps).toEqual([15, 8, 5]);
    const given = await postRun(
      body({ datasets: [{ id: supervisedId }], stages: { sft: { max_steps: 150, epochs: 1 } } }),
    );
    expect(given.json().stages[0].max_steps).toBe(150);
  });
});

describe("data routing", () => {
  it("refuses a dataset that feeds none of the run's stages, naming its stages", async () => {
    await expectRefused(
      body({ stages: { sft: {} } }),
      422,
      "datasets[1].stages",
      /feeds reward, ppo, none of which this run trains \(sft\)/,
    );
  });

  it("refuses a stage no dataset feeds, and a reward stage without preference rows", async () => {
    await expectRefused(
      body({ datasets: [{ id: supervisedId, stages: ["sft"] }], stages: { sft: {}, reward: {} } }),
      422,
      "stages.reward",
      /no dataset feeds the reward stage/,
    );
    await expectRefused(
      body({ datasets: [{ id: supervisedId }], stages: { reward: {} } }),
      422,
      "stages.reward",
      /trains on preference rows and none of the datasets feeding it has them/,
    );
  });

  it("refuses a share of 0 for a trained stage, and a split that leaves a stage no rows", async () => {
    await expectRefused(
      body({ data_split: [2, 0, 4] }),
      422,
      "data_split",
      /the reward share \(the second number\) must be above 0/,
    );
    const tiny = (
      await uploadDataset(
        api.app,
        '{"prompt":"a","chosen":"b","rejected":"c"}\n'.repeat(3),
        "three",
      )
    ).json().id;
    await expectRefused(
      body({ datasets: [{ id: tiny }], data_split: [1, 100, 1], stages: { sft: {}, reward: {} } }),
      422,
      "data_split",
      /give the sft stage 0 rows/,
    );
    await expectRefused(
      body({ datasets: [{ id: tiny }], data_split: [1, 1, 0], stages: { sft: {}, reward: {} } }),
      422,
      "data_split",
      /reward stage 1 preference pair; it needs 2 or more/,
    );
  });
});

describe("warnings", () => {
  it("warns about examples longer than a stage's sequence length and rows a stage cannot use, and GET keeps them", async () => {
    const long = "x".repeat(100);
    const jsonl = [
      `{"prompt":"Tell me a long story","chosen":"${long}","rejected":"short"}`,
      '{"prompt":"Hi","chosen":"Hello.","rejected":"Go away."}',
      '{"prompt":"Bye","chosen":"Goodbye.","rejected":"Go away."}',
      '{"prompt":"Thanks","chosen":"You are welcome.","rejected":"Whatever."}',
    ].join("\n");
    const longId = (await uploadDataset(api.app, jsonl, "long")).json().id;
    const response = await postRun(
      body({
        datasets: [
          { id: longId, stages: ["sft", "reward"] },
          { id: supervisedId, stages: ["sft", "reward"] },
        ],
        data_split: [1, 1, 0],
        stages: { sft: { max_seq_len: 64 }, reward: { max_seq_len: 32 } },
      }),
    );
    expect(response.statusCode, response.body).toBe(201);
    const run = response.json();
    // "<|user|>\nTell me a long story\n<|assistant|>\n" is 44 bytes, + 100 + eos.
    expect(run.warnings).toEqual([
      `dataset ${supervisedId} (supervised) gives the reward stage 20 rows it cannot use (it ` +
        "trains on preference rows only); they are left out: list the stages it should feed in " +
        "datasets[1].stages",
      `dataset ${longId} has rows of up to 145 tokens, longer than stages.sft.max_seq_len 64: ` +
        "their ends will be cut",
      `dataset ${longId} has preference pairs of up to 145 tokens, longer than ` +
        "stages.reward.max_seq_len 32: their ends will be cut, and those whose prompt alone " +
        "takes 32 tokens or more (the longest takes 44) will be left out",
    ]);
    expect((await api.app.inject({ url: `/v1/runs/${run.id}` })).json().warnings).toEqual(
      run.warnings,
    );
    const events = (await api.app.inject({ url: `/v1/runs/${run.id}/events` })).json();
    expect(
      events.data
        .filter((e: { level: string }) => e.level === "warn")
        .map((e: { message: string }) => e.message),
    ).toEqual([...run.warnings].reverse());
  });

  it("warns about PPO prompts longer than max_prompt_seq_len", async () => {
    const response = await postRun(
      body({ stages: { sft: {}, reward: {}, ppo: { max_prompt_seq_len: 30 } } }),
    );
    expect(response.statusCode, response.body).toBe(201);
    // "<|user|>\nSay 39 politely\n<|assistant|>\n" is 39 bytes.
    expect(response.json().warnings).toEqual([
      `dataset ${preferenceId} has prompts of up to 39 tokens, longer than ` +
        "stages.ppo.max_prompt_seq_len 30: the ppo stage cannot use them whole (it counts them " +
        "in examples_truncated / examples_dropped)",
    ]);
  });
});

describe("what a run reports", () => {
  it("names the model to chat with: the PPO actor, else the SFT model, none for a reward model", async () => {
    const prisma = api.database.db.prisma;
    const served = async (stages: object) => {
      const run = (await postRun(body({ stages }))).json();
      await prisma.run.update({ where: { id: run.id }, data: { status: "succeeded" } });
      return (await api.app.inject({ url: `/v1/runs/${run.id}` })).json().fine_tuned_model;
    };
    const all = await served({ sft: {}, reward: {}, ppo: {} });
    expect(all).toMatch(/^run-run_[0-9a-f]{24}$/);
    expect(await served({ sft: {}, reward: {} })).toMatch(/^run-run_[0-9a-f]{24}-sft$/);
    expect(await served({ reward: {} })).toBeNull();
  });

  it("shows the examples a stage cut and dropped and its final summary as the worker records them", async () => {
    const prisma = api.database.db.prisma;
    const run = (await postRun(body({ stages: { reward: {} } }))).json();
    const stageId = run.stages[0].id;
    await startStage(prisma, stageId, "cpu");
    await recordStageData(prisma, stageId, { examplesTruncated: 4, examplesDropped: 1 });
    const summary = { accuracy: 0.875, chosen_score: 1.5, rejected_score: -1.25 };
    await finishStage(prisma, stageId, { status: "succeeded", summary });
    const got = (await api.app.inject({ url: `/v1/runs/${run.id}` })).json();
    expect(got.status).toBe("succeeded");
    expect(got.stages[0]).toMatchObject({ examples_truncated: 4, examples_dropped: 1, summary });
  });

  it("returns the first run for a retried three-stage submission with the same Idempotency-Key", async () => {
    const headers = { "idempotency-key": "rlhf-retry" };
    const first = await postRun(body({ name: "retry" }), headers);
    expect(first.statusCode, first.body).toBe(201);
    const jobs = await allJobIds();
    const second = await postRun(body({ name: "retry" }), headers);
    expect(second.statusCode, second.body).toBe(200);
    expect(second.json()).toEqual(first.json());
    expect(await allJobIds()).toEqual(jobs);
  });
});
