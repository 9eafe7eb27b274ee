// Which processor trains each stage kind. A kind missing here fails its stage with a message
// naming the kinds this worker trains.
import { STAGE_ORDER, type StageKind } from "@chatrl/contracts";
import { ppoProcessor } from "./ppo-stage.ts";
import { rewardProcessor } from "./reward-stage.ts";
import { sftProcessor } from "./sft-stage.ts";
import type { ProcessorTable } from "./stage-loop.ts";

export const PROCESSORS: ProcessorTable = {
  sft: sftProcessor,
  reward: rewardProcessor,
  ppo: ppoProcessor,
};

/** The kinds a table trains, in pipeline order. */
export function implementedKinds(table: ProcessorTable): StageKind[] {
  return STAGE_ORDER.filter((kind) => table[kind] !== undefined);
}
