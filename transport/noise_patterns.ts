/**
 * Noise handshake patterns (spec revision 34, sections 7 and 9) as data. The base patterns are
 * written below in the spec's own notation and compiled once into token lists; psk variants
 * ("XXpsk0+psk3") are derived from a base pattern by `applyPskModifiers`, never written by hand.
 * `noise_state.ts` runs any of them with one interpreter.
 *
 * @module
 */

/** A token that may appear in a pre-message. */
export type PreMessageToken = "e" | "s";

/** A token of a handshake message. */
export type Token = "e" | "s" | "ee" | "es" | "se" | "ss" | "psk";

/** Which side a message or key belongs to. */
export type Role = "initiator" | "responder";

/** A handshake pattern: pre-messages and the token list of each message, in order. */
export interface HandshakePattern {
  /** The pattern's name as it appears in a protocol name ("XX", "IKpsk2", "XXpsk0+psk3"). */
  readonly name: string;
  /** Keys known to the other side before the handshake, by owner. */
  readonly preMessages: {
    readonly initiator: readonly PreMessageToken[];
    readonly responder: readonly PreMessageToken[];
  };
  /**
   * The messages' tokens. Messages alternate initiator → responder, responder → initiator,
   * starting with the initiator, except in one-way patterns (all from the initiator).
   */
  readonly messages: readonly (readonly Token[])[];
  /** One-way pattern (N, K, X and their psk variants): every message goes initiator → responder. */
  readonly oneWay: boolean;
  /** Whether the pattern has psk tokens (so every `e` token also does MixKey). */
  readonly hasPsk: boolean;
}

/** The only cipher suite implemented. */
export const SUITE = "25519_ChaChaPoly_BLAKE2s";

/** A parsed protocol name such as "Noise_XXpsk0+psk3_25519_ChaChaPoly_BLAKE2s". */
export interface ProtocolName {
  /** The full protocol name, as mixed into the handshake hash. */
  readonly name: string;
  /** The handshake pattern it names, psk modifiers applied. */
  readonly pattern: HandshakePattern;
  /** The DH function ("25519"). */
  readonly dh: "25519";
  /** The cipher ("ChaChaPoly"). */
  readonly cipher: "ChaChaPoly";
  /** The hash ("BLAKE2s"). */
  readonly hash: "BLAKE2s";
}

// The base patterns in the spec's notation (sections 7.4, 7.5 and 18). Lines before "..." are
// pre-messages; "->" is from the initiator, "<-" from the responder.
const NOTATION: Readonly<Record<string, string>> = {
  // One-way (7.4).
  N: "<- s | ... | -> e, es",
  K: "-> s | <- s | ... | -> e, es, ss",
  X: "<- s | ... | -> e, es, s, ss",
  // Interactive, fundamental (7.5).
  NN: "-> e | <- e, ee",
  NK: "<- s | ... | -> e, es | <- e, ee",
  NX: "-> e | <- e, ee, s, es",
  KN: "-> s | ... | -> e | <- e, ee, se",
  KK: "-> s | <- s | ... | -> e, es, ss | <- e, ee, se",
  KX: "-> s | ... | -> e | <- e, ee, se, s, es",
  XN: "-> e | <- e, ee | -> s, se",
  XK: "<- s | ... | -> e, es | <- e, ee | -> s, se",
  XX: "-> e | <- e, ee, s, es | -> s, se",
  IN: "-> e, s | <- e, ee, se",
  IK: "<- s | ... | -> e, es, s, ss | <- e, ee, se",
  IX: "-> e, s | <- e, ee, se, s, es",
  // Interactive, deferred (18).
  NK1: "<- s | ... | -> e | <- e, ee, es",
  NX1: "-> e | <- e, ee, s | -> es",
  X1N: "-> e | <- e, ee | -> s | <- se",
  X1K: "<- s | ... | -> e, es | <- e, ee | -> s | <- se",
  XK1: "<- s | ... | -> e | <- e, ee, es | -> s, se",
  X1K1: "<- s | ... | -> e | <- e, ee, es | -> s | <- se",
  X1X: "-> e | <- e, ee, s, es | -> s | <- se",
  XX1: "-> e | <- e, ee, s | -> es, s, se",
  X1X1: "-> e | <- e, ee, s | -> es, s | <- se",
  K1N: "-> s | ... | -> e | <- e, ee | -> se",
  K1K: "-> s | <- s | ... | -> e, es | <- e, ee | -> se",
  KK1: "-> s | <- s | ... | -> e | <- e, ee, se, es",
  K1K1: "-> s | <- s | ... | -> e | <- e, ee, es | -> se",
  K1X: "-> s | ... | -> e | <- e, ee, s, es | -> se",
  KX1: "-> s | ... | -> e | <- e, ee, se, s | -> es",
  K1X1: "-> s | ... | -> e | <- e, ee, s | -> se, es",
  I1N: "-> e, s | <- e, ee | -> se",
  I1K: "<- s | ... | -> e, es, s | <- e, ee | -> se",
  IK1: "<- s | ... | -> e, s | <- e, ee, se, es",
  I1K1: "<- s | ... | -> e, s | <- e, ee, es | -> se",
  I1X: "-> e, s | <- e, ee, s, es | -> se",
  IX1: "-> e, s | <- e, ee, se, s | -> es",
  I1X1: "-> e, s | <- e, ee, s | -> se, es",
};

const MESSAGE_TOKENS: ReadonlySet<string> = new Set(["e", "s", "ee", "es", "se", "ss", "psk"]);

function freezePattern(
  name: string,
  preMessages: HandshakePattern["preMessages"],
  messages: Token[][],
  oneWay: boolean,
): HandshakePattern {
  for (const message of messages) Object.freeze(message);
  return Object.freeze({
    name,
    preMessages: Object.freeze({
      initiator: Object.freeze([...preMessages.initiator]),
      responder: Object.freeze([...preMessages.responder]),
    }),
    messages: Object.freeze(messages),
    oneWay,
    hasPsk: messages.some((m) => m.includes("psk")),
  });
}

function compile(name: string, notation: string): HandshakePattern {
  const lines = notation.split("|").map((line) => line.trim());
  const dots = lines.indexOf("...");
  const pre = dots < 0 ? [] : lines.slice(0, dots);
  const body = dots < 0 ? lines : lines.slice(dots + 1);
  const split = (line: string): [string, string[]] => {
    const arrow = line.slice(0, 2);
    if (arrow !== "->" && arrow !== "<-") throw new Error(`pattern ${name}: bad line "${line}"`);
    return [arrow, line.slice(2).split(",").map((t) => t.trim())];
  };
  const preMessages = { initiator: [] as PreMessageToken[], responder: [] as PreMessageToken[] };
  for (const line of pre) {
    const [arrow, tokens] = split(line);
    for (const token of tokens) {
      if (token !== "e" && token !== "s") throw new Error(`pattern ${name}: bad pre-message`);
      preMessages[arrow === "->" ? "initiator" : "responder"].push(token);
    }
  }
  const oneWay = name.length === 1;
  const messages = body.map((line, i) => {
    const [arrow, tokens] = split(line);
    const expected = oneWay || i % 2 === 0 ? "->" : "<-";
    if (arrow !== expected) {
      throw new Error(`pattern ${name}: message ${i} has the wrong direction`);
    }
    for (const token of tokens) {
      if (!MESSAGE_TOKENS.has(token)) throw new Error(`pattern ${name}: bad token "${token}"`);
    }
    return tokens as Token[];
  });
  return freezePattern(name, preMessages, messages, oneWay);
}

/** The base (psk-free) handshake patterns, by name: one-way, fundamental and deferred. */
export const HANDSHAKE_PATTERNS: ReadonlyMap<string, HandshakePattern> = new Map(
  Object.entries(NOTATION).map(([name, notation]) => [name, compile(name, notation)]),
);

/**
 * Derives a psk variant of `base` (spec 9.2): `psk0` puts a psk token at the start of the first
 * message, `pskN` at the end of message N. `positions` must be strictly ascending, within the
 * pattern's messages, and `base` must have no psk tokens yet.
 */
export function applyPskModifiers(
  base: HandshakePattern,
  positions: readonly number[],
): HandshakePattern {
  if (base.hasPsk) throw new RangeError(`pattern ${base.name} already has psk tokens`);
  if (positions.length === 0) return base;
  const messages = base.messages.map((m) => [...m]);
  let previous = -1;
  for (const position of positions) {
    if (!Number.isInteger(position) || position <= previous || position > messages.length) {
      throw new RangeError(
        `bad psk modifiers for ${base.name}: psk positions must be ascending, from 0 to ${messages.length}`,
      );
    }
    previous = position;
    if (position === 0) messages[0]!.unshift("psk");
    else messages[position - 1]!.push("psk");
  }
  const name = base.name + positions.map((p) => `psk${p}`).join("+");
  return freezePattern(name, base.preMessages, messages, base.oneWay);
}

const resolved = new Map<string, HandshakePattern>();

/**
 * The pattern for a pattern name with optional psk modifiers ("XX", "IKpsk2", "XXpsk0+psk3").
 * Throws RangeError for an unknown base pattern or an unsupported modifier.
 */
export function resolvePattern(name: string): HandshakePattern {
  const cached = resolved.get(name);
  if (cached !== undefined) return cached;
  const at = name.indexOf("psk");
  const baseName = at < 0 ? name : name.slice(0, at);
  const base = HANDSHAKE_PATTERNS.get(baseName);
  if (base === undefined) {
    throw new RangeError(`unknown Noise handshake pattern "${name}"`);
  }
  let pattern = base;
  if (at >= 0) {
    const positions = name.slice(at).split("+").map((modifier) => {
      const match = /^psk(0|[1-9][0-9]?)$/.exec(modifier);
      if (match === null) {
        throw new RangeError(`unsupported modifier "${modifier}" in Noise pattern "${name}"`);
      }
      return Number(match[1]);
    });
    pattern = applyPskModifiers(base, positions);
  }
  resolved.set(name, pattern);
  return pattern;
}

/**
 * Parses a full protocol name ("Noise_XXpsk0+psk3_25519_ChaChaPoly_BLAKE2s"). Throws RangeError
 * for a malformed name, an unknown pattern, or any suite other than 25519_ChaChaPoly_BLAKE2s.
 */
export function parseProtocolName(name: string): ProtocolName {
  const parts = name.split("_");
  if (parts.length !== 5 || parts[0] !== "Noise") {
    throw new RangeError(
      `malformed Noise protocol name "${name}": expected Noise_<pattern>_<dh>_<cipher>_<hash>`,
    );
  }
  const suite = parts.slice(2).join("_");
  if (suite !== SUITE) {
    throw new RangeError(
      `unsupported Noise suite "${suite}" in "${name}": only ${SUITE} is implemented`,
    );
  }
  return Object.freeze({
    name,
    pattern: resolvePattern(parts[1]!),
    dh: "25519",
    cipher: "ChaChaPoly",
    hash: "BLAKE2s",
  });
}

/** The full protocol name for a pattern (or pattern name) with this module's suite. */
export function protocolNameFor(pattern: HandshakePattern | string): string {
  const name = typeof pattern === "string" ? resolvePattern(pattern).name : pattern.name;
  return `Noise_${name}_${SUITE}`;
}

/** Who sends message `index` of `pattern`. */
export function messageSender(pattern: HandshakePattern, index: number): Role {
  return pattern.oneWay || index % 2 === 0 ? "initiator" : "responder";
}
