// The dataset row formats are defined (and validated) in @chatrl/contracts; the engine reads them.
// Type-only, so the engine does not load the contracts package at run time.
export type { ChatRow, DatasetRow, PreferenceRow, SupervisedRow } from "@chatrl/contracts";
