// Tokenizers turn text into the integer ids a model reads and back.
import { BYTE_VOCAB_SIZE } from "./config";

/** What training and generation need from a tokenizer. */
export interface Tokenizer {
  readonly vocabSize: number;
  /** Ends an answer: appended to training responses, stops generation. */
  readonly eosId: number;
  /** Fills batches up to a common length; never attended to or trained on. */
  readonly padId: number;
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
}

/**
 * One token per UTF-8 byte (ids 0..255) plus special tokens after them, for models trained from
 * scratch. Special tokens are never produced by encode: text that spells "<|endoftext|>" is
 * just bytes, so user input cannot end a sequence.
 */
export class ByteTokenizer implements Tokenizer {
  readonly eosId = 256;
  readonly padId = 257;
  readonly vocabSize = BYTE_VOCAB_SIZE;
  static readonly SPECIAL_TOKENS: Readonly<Record<number, string>> = {
    256: "<|endoftext|>",
    257: "<|pad|>",
  };

  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder("utf-8"); // invalid sequences become U+FFFD

  encode(text: string): number[] {
    return Array.from(this.encoder.encode(text));
  }

  /** Special tokens are dropped; incomplete UTF-8 sequences decode to U+FFFD. */
  decode(ids: readonly number[]): string {
    const bytes = Uint8Array.from(ids.filter((id) => id >= 0 && id < 256));
    return this.decoder.decode(bytes);
  }
}
