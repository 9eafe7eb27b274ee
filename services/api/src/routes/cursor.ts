import { ApiError } from "@chatrl/contracts";

/** An `after` that is not the id of an item of this list (a typo, or an id of another kind). */
export function unknownCursor(what: string, after: string): ApiError {
  return new ApiError(
    400,
    `'after' must be the id of a ${what} from an earlier page; there is no ${what} '${after}'`,
    { param: "after", code: "invalid_cursor" },
  );
}
