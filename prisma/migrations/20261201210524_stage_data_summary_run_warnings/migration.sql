-- AlterTable
ALTER TABLE "run" ADD COLUMN     "warnings" TEXT[] DEFAULT ARRAY[]::TEXT[];

-- AlterTable
ALTER TABLE "stage" ADD COLUMN     "examples_dropped" INTEGER NOT NULL DEFAULT 0,
ADD COLUMN     "examples_truncated" INTEGER NOT NULL DEFAULT 0,
ADD COLUMN     "summary" JSONB NOT NULL DEFAULT '{}';
