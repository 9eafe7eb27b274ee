// Debian's chromium for the dashboard's browser tests, driven by playwright-core (which downloads
// no browser): /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it), or the binary
// CHATRL_CHROMIUM names.
import { type Browser, chromium } from "playwright-core";

export const CHROMIUM = process.env.CHATRL_CHROMIUM ?? "/usr/bin/chromium";

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}
