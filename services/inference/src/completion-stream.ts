// Turns the pieces of text the engine reports while generating into the deltas sent to a
// streaming client. Text that might be the start of a stop string is held back until it is
// clear it is not (as vLLM does), so a client never sees text that the final answer drops, and
// the deltas always add up to the non-streamed completion.

export class CompletionStream {
  #received = "";
  #sent = "";

  constructor(
    private readonly stop: string[],
    private readonly emit: (delta: string) => void,
  ) {}

  push(piece: string): void {
    this.#received += piece;
    const safe = this.#received.slice(0, this.#safeLength());
    if (safe.length > this.#sent.length) {
      this.emit(safe.slice(this.#sent.length));
      this.#sent = safe;
    }
  }

  /** Sends whatever of the final completion has not been sent yet. */
  finish(finalText: string): void {
    if (!finalText.startsWith(this.#sent)) {
      throw new Error("streamed text is not a prefix of the final completion");
    }
    if (finalText.length > this.#sent.length) this.emit(finalText.slice(this.#sent.length));
    this.#sent = finalText;
  }

  #safeLength(): number {
    const text = this.#received;
    let safe = text.length;
    // A character split across byte tokens may decode as U+FFFD until its last byte arrives.
    while (safe > 0 && text[safe - 1] === "\uFFFD") safe--;
    for (const stop of this.stop) {
      const at = text.indexOf(stop);
      if (at >= 0) safe = Math.min(safe, at);
      for (let k = Math.min(stop.length - 1, text.length); k > 0; k--) {
        if (text.endsWith(stop.slice(0, k))) {
          safe = Math.min(safe, text.length - k);
          break;
        }
      }
    }
    return safe;
  }
}
