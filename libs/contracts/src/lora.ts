// Which projections of a model get LoRA adapters: shared by the api (it refuses a
// lora_module_name that selects none) and the engine (it adds the adapters). Dependency-free, so
// the engine imports it without the rest of the contracts ("@chatrl/contracts/lora").

/** A block's projections under their GPT-2 names, in the order loraTargetNames lists them. */
export const LORA_PROJECTIONS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] as const;

/**
 * The projections of a model of `nLayers` blocks whose name contains `moduleName` (as
 * DeepSpeed-Chat's lora_module_name selects them), in layer order: h.<i>.attn.c_attn,
 * h.<i>.attn.c_proj, h.<i>.mlp.c_fc, h.<i>.mlp.c_proj for i = 0 .. nLayers - 1.
 */
export function loraTargetNames(nLayers: number, moduleName: string): string[] {
  const names: string[] = [];
  for (let layer = 0; layer < nLayers; layer++) {
    for (const projection of LORA_PROJECTIONS) {
      const name = `h.${layer}.${projection}`;
      if (name.includes(moduleName)) names.push(name);
    }
  }
  return names;
}
