// Reading Prometheus text in tests: one sample's value by metric name and labels.

/**
 * The value of the first sample of `name` whose labels include `labels`, or undefined when
 * there is none (`name` must be the full series name, e.g. `x_total` or `x_bucket`).
 */
export function promSample(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) {
      return Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return undefined;
}
