// Tokenizers turn text into the integer ids a model reads and back.
import {
  BYTE_VOCAB_SIZE,
  LEGACY_BYTE_VOCAB_SIZE,
  type ModelConfig,
  type TokenizerVersion,
} from "./config";

/** The special tokens of a chat template: each role's marker and the end of a turn. */
export type ChatTokens = { system: number; user: number; assistant: number; endOfTurn: number };

/** What training and generation need from a tokenizer. */
export interface Tokenizer {
  readonly vocabSize: number;
  /** Ends an answer: appended to training responses, stops generation. */
  readonly eosId: number;
  /** Fills batches up to a common length; never attended to, trained on or sampled. */
  readonly padId: number;
  /**
   * The chat roles as their own ids, outside anything encode() produces, so no text can forge a
   * turn. Absent: the chat template is plain text (the byte-v1 format).
   */
  readonly chatTokens?: ChatTokens;
  encode(text: string): number[];
  decode(ids: readonly number[]): string;
  /** The UTF-8 bytes that ids stand for (special tokens stand for none). */
  bytes(ids: readonly number[]): Uint8Array;
  /** A printable name of one token (logprobs): its text, "bytes:\\xNN" for part of a character, or a special token's name. */
  tokenName(id: number): string;
}

/**
 * One token per UTF-8 byte (ids 0..255) plus special tokens after them, for models trained from
 * scratch. Special tokens are never produced by encode: text that spells "<|endoftext|>" or
 * "<|user|>" is just bytes, so user input can neither end a sequence nor forge a chat turn.
 *
 * Version "byte-v2" (the default) adds the chat tokens <|system|> 258, <|user|> 259,
 * <|assistant|> 260 and <|end|> 261 (vocabulary 262); "byte-v1" is the older vocabulary of 258
 * whose chat template spells the roles in bytes (checkpoints saved before versions were recorded).
 */
export class ByteTokenizer implements Tokenizer {
  readonly eosId = 256;
  readonly padId = 257;
  readonly vocabSize: number;
  readonly chatTokens?: ChatTokens;
  readonly specialTokens: Readonly<Record<number, string>>;

  private readonly encoder = new TextEncoder();
  // ignoreBOM: a reply that starts with U+FEFF keeps it (the default would strip it).
  private readonly decoder = new TextDecoder("utf-8", { ignoreBOM: true });

  constructor(readonly version: TokenizerVersion = "byte-v2") {
    const special: Record<number, string> = { 256: "<|endoftext|>", 257: "<|pad|>" };
    if (version === "byte-v2") {
      this.chatTokens = { system: 258, user: 259, assistant: 260, endOfTurn: 261 };
      Object.assign(special, {
        258: "<|system|>",
        259: "<|user|>",
        260: "<|assistant|>",
        261: "<|end|>",
      });
      this.vocabSize = BYTE_VOCAB_SIZE;
    } else if (version === "byte-v1") {
      this.vocabSize = LEGACY_BYTE_VOCAB_SIZE;
    } else {
      throw new Error(`unknown tokenizer version ${String(version)} (known: byte-v1, byte-v2)`);
    }
    this.specialTokens = special;
  }

  encode(text: string): number[] {
    return Array.from(this.encoder.encode(text));
  }

  /** Special tokens are dropped; incomplete or invalid UTF-8 decodes to U+FFFD. */
  decode(ids: readonly number[]): string {
    return this.decoder.decode(this.bytes(ids));
  }

  bytes(ids: readonly number[]): Uint8Array {
    return Uint8Array.from(ids.filter((id) => id >= 0 && id < 256));
  }

  tokenName(id: number): string {
    if (id >= 0 && id < 0x80) return String.fromCharCode(id);
    if (id >= 0x80 && id < 256) return `bytes:\\x${id.toString(16).padStart(2, "0")}`;
    return this.specialTokens[id] ?? `<|token_${id}|>`;
  }
}

/**
 * How many bytes at the end of `bytes` begin a UTF-8 character that is not complete yet (0 to
 * 3): the bytes a stream must hold back, and drop when nothing more will come.
 */
export function incompleteUtf8Tail(bytes: Uint8Array, end = bytes.length): number {
  for (let back = 1; back <= Math.min(3, end); back++) {
    const b = bytes[end - back];
    if ((b & 0xc0) === 0x80) continue; // a continuation byte: look further back for the lead
    const need =
      b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 1;
    if (need <= back) return 0;
    // Only a valid start of a character is waited for; an invalid one is U+FFFD already.
    if (back > 1) {
      const second = bytes[end - back + 1];
      const lo = b === 0xe0 ? 0xa0 : b === 0xf0 ? 0x90 : 0x80;
      const hi = b === 0xed ? 0x9f : b === 0xf4 ? 0x8f : 0xbf;
      if (second < lo || second > hi) return 0;
    }
    return back;
  }
  return 0;
}

/**
 * The tokenizer a model was trained with, from its config ("byte-v1" when the config predates
 * the field). Throws when the model's vocabulary does not cover the tokenizer's ids.
 */
export function tokenizerFor(config: Pick<ModelConfig, "vocabSize" | "tokenizer">): ByteTokenizer {
  const tokenizer = new ByteTokenizer(config.tokenizer ?? "byte-v1");
  if (config.vocabSize < tokenizer.vocabSize) {
    throw new Error(
      `the model's vocabulary of ${config.vocabSize} is smaller than the ${tokenizer.version} ` +
        `tokenizer's ${tokenizer.vocabSize} ids`,
    );
  }
  return tokenizer;
}

/** Which ids sampling must never pick, and which end a reply (they are not part of its text). */
export type TokenRules = { suppress: number[]; stop: number[] };

/**
 * For serving: the pad token and any id past the tokenizer's vocabulary (rows a model may have
 * beyond it) are never sampled; end-of-text and the chat tokens (a new turn, the end of one)
 * end the reply.
 */
export function servingTokenRules(tokenizer: Tokenizer, modelVocabSize: number): TokenRules {
  const suppress = [tokenizer.padId];
  for (let id = tokenizer.vocabSize; id < modelVocabSize; id++) suppress.push(id);
  const stop = [tokenizer.eosId, ...Object.values(tokenizer.chatTokens ?? {})];
  return { suppress, stop };
}
