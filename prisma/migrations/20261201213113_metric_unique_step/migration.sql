-- Keep the first value of each stage, name and step (an older worker could report a step twice
-- when a resumed attempt redid it), so the unique index below can be built.
DELETE FROM "metric" a USING "metric" b
WHERE a."stage_id" = b."stage_id" AND a."name" = b."name" AND a."step" = b."step" AND a."id" > b."id";

-- DropIndex
DROP INDEX "metric_stage_id_name_step_idx";

-- CreateIndex
CREATE UNIQUE INDEX "metric_stage_id_name_step_key" ON "metric"("stage_id", "name", "step");
