/**
 * The shared cookie: where it comes from, how strong it looks, and the Noise pre-shared key
 * derived from it. Also the small set of helpers for files that hold secrets (cookie, identity
 * key) and for the config directory, shared with `identity.ts` and `known_nodes.ts`.
 *
 * The cookie never appears in an error message; files are created 0600 in a 0700 directory, and
 * a secret file that other users can read is refused, as ssh does.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { scryptSync } from "node:crypto";
import {
  closeSync,
  constants as fsConstants,
  fstatSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { homedir } from "node:os";
import { basename, dirname, isAbsolute, join } from "node:path";
import process from "node:process";
import { ConfigError } from "../errors.ts";
import { randomBytes } from "./crypto.ts";

// ---------------------------------------------------------------------------------------------
// Pre-shared key

/** The fixed scrypt salt: binds the derived key to nodectl's cookie-PSK use and version. */
export const COOKIE_PSK_LABEL = "nodectl/1 cookie psk";

/**
 * scrypt cost parameters for `derivePsk`. N = 2^15, r = 8, p = 1 uses 128·N·r = 32 MiB. On the
 * 2-core development machine, idle, one derivation took (first call in a fresh process and
 * later calls alike):
 *   - Deno 2.9.6:      ~93–105 ms
 *   - Node 24.22.3:    ~75–88 ms (the single executable)
 * and up to ~2× that while the machine was busy. For comparison, N = 2^14 took ~31–40 ms and
 * N = 2^16 (64 MiB) ~154–189 ms. Changing any of these changes every PSK, so it is a protocol
 * change (change the label with it).
 */
const SCRYPT_N = 1 << 15;
const SCRYPT_R = 8;
const SCRYPT_P = 1;
/** node:crypto refuses scrypt above `maxmem`; 32 MiB of work area plus headroom. */
const SCRYPT_MAXMEM = 64 * 1024 * 1024;

/** Length of the derived pre-shared key (Noise's PSK length). */
export const PSK_LENGTH = 32;

/**
 * The 32-byte Noise pre-shared key for `cookie` (any length, UTF-8), via scrypt under the fixed
 * label `COOKIE_PSK_LABEL`. Deliberately slow (~75–105 ms) and memory-hard (32 MiB), so every
 * guess in an offline attack on a captured handshake costs as much; derive it once per process,
 * not per connection. Throws ConfigError for an empty cookie.
 */
export function derivePsk(cookie: string): Uint8Array {
  if (cookie.length === 0) throw new ConfigError("cookie is empty");
  const input = Buffer.from(cookie, "utf8");
  const out = scryptSync(input, COOKIE_PSK_LABEL, PSK_LENGTH, {
    N: SCRYPT_N,
    r: SCRYPT_R,
    p: SCRYPT_P,
    maxmem: SCRYPT_MAXMEM,
  });
  const psk = new Uint8Array(out);
  input.fill(0);
  out.fill(0);
  return psk;
}

// ---------------------------------------------------------------------------------------------
// Strength

/** Cookies estimated below this many bits are refused unless weak cookies are allowed. */
export const MIN_COOKIE_BITS = 80;

/** What a generated cookie is guaranteed to score (it holds 264 random bits). */
export const GENERATED_COOKIE_BITS = 256;

/**
 * Words (lowercase) an attacker tries first: common passwords, keyboard walks, and words anyone
 * would think of for this tool. Matched case-insensitively anywhere in the cookie.
 */
const COMMON_WORDS: readonly string[] = [
  "password",
  "passwd",
  "passw0rd",
  "secret",
  "cookie",
  "erlang",
  "elixir",
  "nodectl",
  "admin",
  "root",
  "login",
  "letmein",
  "welcome",
  "changeme",
  "default",
  "test",
  "hello",
  "private",
  "public",
  "server",
  "node",
  "localhost",
  "example",
  "qwerty",
  "qwertz",
  "azerty",
  "asdf",
  "zxcv",
  "iloveyou",
  "trustno1",
  "dragon",
  "monkey",
  "master",
  "shadow",
  "sunshine",
  "princess",
  "football",
  "baseball",
  "superman",
  "batman",
];

/** Bits charged for a word from COMMON_WORDS: a guess from a ~16k-word password dictionary. */
const COMMON_WORD_BITS = 14;
/** Bits per letter of a word-like lowercase run (English text carries ~1.3–2 bits a letter). */
const WORD_LIKE_BITS_PER_LETTER = 2;

/** Characters analysed by estimateCookieBits; later ones add nothing to the estimate. */
const ANALYZED_CHARS = 1024;

/** Size of the character pool an attacker brute-forcing `chars` would have to search. */
function poolSize(chars: readonly string[]): number {
  let lower = false, upper = false, digit = false, symbol = false, other = false;
  for (const ch of chars) {
    if (ch >= "a" && ch <= "z") lower = true;
    else if (ch >= "A" && ch <= "Z") upper = true;
    else if (ch >= "0" && ch <= "9") digit = true;
    else if (ch >= " " && ch <= "~") symbol = true;
    else other = true;
  }
  let pool = (lower ? 26 : 0) + (upper ? 26 : 0) + (digit ? 10 : 0) + (symbol ? 33 : 0)
    + (other ? 64 : 0);
  // Hex text (one letter case) is 4 bits a character, not log2(36).
  const text = chars.join("");
  if (/^[0-9a-f]+$/.test(text) || /^[0-9A-F]+$/.test(text)) pool = Math.min(pool, 16);
  return Math.max(pool, 2);
}

/**
 * Letter pairs common in English words (about the 250 most frequent). A run of letters made
 * almost only of these reads like a word; random letters rarely do (about 1 pair in 3 is here).
 */
const COMMON_BIGRAMS = new Set(
  (
    "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le "
    + "ve co me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur ca el ta la ns di fo ho pe ec "
    + "pr no ct us ac ot il tr ly nc et ut ss so rs un lo wa ge ie wh ee wi em ad ol rt po we na "
    + "ul ni ts mo ow pa im mi ai sh ir su id os iv ia am fi ci vi pl ig tu ev ld ry mp fe bl ab "
    + "gh ty op wo sa ay ex ke fr oo av ag if ap gr od bo sp rd do uc bu ei ov by rm ep tt oc fa "
    + "ef cu rn sc gi da yo cr cl du ga qu ue ff ba ey ls va um pp ua up lu go ht ru ug ds lt pi "
    + "rc rr eg au ck ew mu br bi pt ak pu ui rg ib tl ny ki rk ys ob mm fu ph og ms ye ud mb ip "
    + "ub oi rl gu dr hr cc tw ft wn nu af hu nn eo vo rv nf xp gn sm fl iz ok nl my gl aw ju oa "
    + "sy sl ps jo rf"
  ).split(" "),
);

/**
 * True when a run of 5+ lowercase letters reads like a word rather than random letters: 25–65 %
 * vowels (a e i o u y), no three vowels in a row, and every letter pair common in English (one
 * uncommon pair allowed from 7 letters on).
 */
function wordLike(letters: string): boolean {
  if (letters.length < 5) return false;
  let vowels = 0, vowelRun = 0;
  for (const ch of letters) {
    if ("aeiouy".includes(ch)) {
      vowels++;
      if (++vowelRun >= 3) return false;
    } else {
      vowelRun = 0;
    }
  }
  const share = vowels / letters.length;
  if (share < 0.25 || share > 0.65) return false;
  let uncommon = 0;
  for (let i = 0; i + 1 < letters.length; i++) {
    if (!COMMON_BIGRAMS.has(letters.slice(i, i + 2))) uncommon++;
  }
  return uncommon <= (letters.length >= 7 ? 1 : 0);
}

/**
 * A conservative estimate of the cookie's entropy in bits: what guessing it would cost an
 * attacker who tries likely structure first. Starts from brute force over the character classes
 * present (log2 of the pool per character; hex counts as 4 bits), then lets cheaper explanations
 * of parts of the cookie win: runs of one character or of consecutive characters ("aaa",
 * "12345", "zyx"), repeats of an earlier part ("secretsecret"), common password words (14 bits
 * each), and word-like lowercase runs ("horse": 2 bits a letter). Only the first 1024
 * characters are looked at. "password123" scores ~22 bits, "correcthorsebatterystaple" 50, 20
 * random uppercase letters (an Erlang-style cookie) ~94, a `generateCookie()` cookie ≥ 256.
 */
export function estimateCookieBits(cookie: string): number {
  // Only the first ANALYZED_CHARS characters count: bounded work, and never more than they show.
  const chars = Array.from(cookie).slice(0, ANALYZED_CHARS);
  const n = chars.length;
  if (n === 0) return 0;
  const perChar = Math.log2(poolSize(chars));
  // spans[i]: cheaper ways to explain chars[i, end) as a whole.
  const spans: { end: number; bits: number }[][] = chars.map(() => []);
  const addSpan = (start: number, end: number, bits: number) => {
    if (bits < (end - start) * perChar) spans[start]!.push({ end, bits });
  };

  // Runs of one character (delta 0) or of consecutive code points (delta ±1), 3 or longer.
  const code = (i: number) => chars[i]!.codePointAt(0)!;
  for (let i = 0; i + 2 < n;) {
    const delta = code(i + 1) - code(i);
    let end = i + 2;
    if (delta >= -1 && delta <= 1) {
      while (end < n && code(end) - code(end - 1) === delta) end++;
    }
    if (end - i < 3) {
      i++;
      continue;
    }
    for (let e = i + 3; e <= end; e++) {
      addSpan(i, e, perChar + (delta === 0 ? 0 : 1) + Math.log2(e - i));
    }
    i = end - 1;
  }

  // Repeats of an earlier part (case-sensitive), 4 or more characters: a back-reference.
  // Candidates are the last few earlier places the same three characters occurred.
  const earlier = new Map<string, number[]>();
  for (let i = 0; i + 2 < n; i++) {
    const gram = chars[i]! + chars[i + 1]! + chars[i + 2]!;
    const places = earlier.get(gram) ?? [];
    let longest = 0;
    for (const j of places) {
      let len = 3;
      while (i + len < n && chars[j + len] === chars[i + len]) len++;
      longest = Math.max(longest, len);
    }
    if (longest >= 4) addSpan(i, i + longest, Math.log2(i + 1) + Math.log2(longest));
    places.push(i);
    if (places.length > 8) places.shift();
    earlier.set(gram, places);
  }

  // Common words, case-insensitive; any capital costs one more bit. `folded` has exactly one
  // code unit per character (non-ASCII ones become NUL, which no word contains).
  const fold = (c: string) => (c.length === 1 && c < "\x80" ? c.toLowerCase() : "\0");
  const folded = chars.map(fold).join("");
  for (const word of COMMON_WORDS) {
    for (let at = folded.indexOf(word); at !== -1; at = folded.indexOf(word, at + 1)) {
      const exact = chars.slice(at, at + word.length).join("") === word;
      addSpan(at, at + word.length, COMMON_WORD_BITS + (exact ? 0 : 1));
    }
  }

  // Word-like runs of 5+ lowercase letters, optionally capitalised ("Horse", "staple").
  const isLower = (i: number) => i < n && chars[i]! >= "a" && chars[i]! <= "z";
  for (let i = 0; i < n;) {
    if (!isLower(i)) {
      i++;
      continue;
    }
    let end = i;
    while (isLower(end)) end++;
    const capital = i > 0 && chars[i - 1]! >= "A" && chars[i - 1]! <= "Z" ? 1 : 0;
    const letters = chars.slice(i, end).join("");
    if (wordLike(letters)) {
      addSpan(i - capital, end, WORD_LIKE_BITS_PER_LETTER * (end - i + capital) + capital);
    }
    i = end;
  }

  // Cheapest explanation of the whole cookie, left to right.
  const best = new Array<number>(n + 1).fill(Infinity);
  best[0] = 0;
  for (let i = 0; i < n; i++) {
    const here = best[i]!;
    best[i + 1] = Math.min(best[i + 1]!, here + perChar);
    for (const { end, bits } of spans[i]!) best[end] = Math.min(best[end]!, here + bits);
  }
  return best[n]!;
}

/**
 * Refuses a cookie whose `estimateCookieBits` is below MIN_COOKIE_BITS with a ConfigError saying
 * how to get a strong one (the cookie itself is never echoed), unless `allowWeak`. `source`
 * names where the cookie came from in the message ("NODECTL_COOKIE", a file path). Returns the
 * estimate.
 */
export function checkCookieStrength(
  cookie: string,
  options: { allowWeak?: boolean; source?: string } = {},
): number {
  const bits = estimateCookieBits(cookie);
  if (bits < MIN_COOKIE_BITS && !options.allowWeak) {
    const from = options.source === undefined ? "" : ` from ${options.source}`;
    throw new ConfigError(
      `cookie${from} is too weak (~${Math.floor(bits)} bits of estimated entropy, need `
        + `${MIN_COOKIE_BITS}): use \`nodectl cookie new\` to generate one, or pass `
        + "--allow-weak-cookie",
    );
  }
  return bits;
}

/**
 * A new random cookie: 33 random bytes (264 bits) as 44 base64url characters, so every
 * character carries a full 6 bits. The rare draw that happens to look patterned to
 * `estimateCookieBits` (under GENERATED_COOKIE_BITS) is drawn again, so a generated cookie is
 * never refused as weak; that discards a negligible share of the space.
 */
export function generateCookie(): string {
  for (;;) {
    const bytes = randomBytes(33);
    const cookie = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
      .toString("base64url");
    bytes.fill(0);
    if (estimateCookieBits(cookie) >= GENERATED_COOKIE_BITS) return cookie;
  }
}

// ---------------------------------------------------------------------------------------------
// Loading

/** The environment variable that carries the cookie. */
export const COOKIE_ENV = "NODECTL_COOKIE";
/** Name of the default cookie file inside the config directory. */
export const COOKIE_FILE_NAME = "cookie";

/** Where `loadCookie` looks; every field is optional except `create`. */
export interface LoadCookieOptions {
  /** Environment to read NODECTL_COOKIE, XDG_CONFIG_HOME and HOME from (process.env). */
  env?: Record<string, string | undefined>;
  /** An explicit cookie file (--cookie-file); wins over everything; never created. */
  cookieFile?: string;
  /** The config directory holding the default `cookie` file (`defaultConfigDir(env)`). */
  configDir?: string;
  /** Create the default cookie file with a generated cookie when it does not exist. */
  create: boolean;
}

/** A loaded cookie and where it came from (for messages: never print `cookie`). */
export interface LoadedCookie {
  /** The cookie text, trailing newline removed. */
  cookie: string;
  /** "env" for NODECTL_COOKIE, "file" for a cookie file. */
  source: "env" | "file";
  /** The file it was read from, when `source` is "file". */
  path?: string;
  /** True when this call created the default cookie file. */
  created: boolean;
}

/**
 * The config directory: `$XDG_CONFIG_HOME/nodectl` when XDG_CONFIG_HOME is an absolute path,
 * else `$HOME/.config/nodectl` (HOME from `env`, falling back to the OS's idea of home).
 */
export function defaultConfigDir(env: Record<string, string | undefined> = process.env): string {
  const xdg = env.XDG_CONFIG_HOME;
  if (xdg !== undefined && isAbsolute(xdg)) return join(xdg, "nodectl");
  const home = env.HOME !== undefined && env.HOME !== "" ? env.HOME : homedir();
  if (home === "") {
    throw new ConfigError("cannot find the config directory: set HOME or XDG_CONFIG_HOME");
  }
  return join(home, ".config", "nodectl");
}

/** The cookie text from file or variable contents: one line, trailing newline dropped. */
function cookieFromText(text: string, source: string, hint: string): string {
  const cookie = text.replace(/[\r\n]+$/, "");
  if (cookie === "") throw new ConfigError(`${source} is empty: ${hint}`);
  if (/[\r\n]/.test(cookie)) {
    throw new ConfigError(`${source} has more than one line: it must hold only the cookie`);
  }
  return cookie;
}

/**
 * The cookie, from the first of: `cookieFile`; NODECTL_COOKIE; `<configDir>/cookie`. The
 * default file is created on first use when `create` is set — a generated cookie, mode 0600,
 * directory 0700, created exclusively so concurrent first starts agree on one cookie — so nodes
 * run by one user on one host share it with no setup, like ~/.erlang.cookie. Throws ConfigError
 * (naming the source, never the cookie) for a missing, empty, multi-line, unreadable, or
 * group/world-accessible file and for an empty NODECTL_COOKIE. Does not check strength.
 */
export function loadCookie(options: LoadCookieOptions): LoadedCookie {
  const env = options.env ?? process.env;
  if (options.cookieFile !== undefined) {
    const path = options.cookieFile;
    const text = readPrivateFile(path, "cookie file");
    if (text === undefined) {
      throw new ConfigError(
        `cookie file ${path} does not exist: create it (mode 0600) holding the cookie, e.g. `
          + `from \`nodectl cookie new\``,
      );
    }
    const cookie = cookieFromText(
      text,
      `cookie file ${path}`,
      `put the cookie in it (\`nodectl cookie new\` makes one)`,
    );
    return { cookie, source: "file", path, created: false };
  }

  const fromEnv = env[COOKIE_ENV];
  if (fromEnv !== undefined) {
    const cookie = cookieFromText(
      fromEnv,
      COOKIE_ENV,
      "set it to the cookie, or unset it to use the cookie file",
    );
    return { cookie, source: "env", created: false };
  }

  const dir = options.configDir ?? defaultConfigDir(env);
  const path = join(dir, COOKIE_FILE_NAME);
  let text = readPrivateFile(path, "cookie file");
  let created = false;
  if (text === undefined) {
    if (!options.create) {
      throw new ConfigError(
        `no cookie: ${COOKIE_ENV} is not set and ${path} does not exist; start a node `
          + `(\`nodectl serve\`) once to create it, or set ${COOKIE_ENV}`,
      );
    }
    ensurePrivateDir(dir);
    created = writeFileExclusive(path, generateCookie() + "\n", "cookie file");
    // Whoever won a race to create it, everyone uses what is on disk now.
    text = readPrivateFile(path, "cookie file");
    if (text === undefined) {
      throw new ConfigError(`cookie file ${path} disappeared while being created; try again`);
    }
  }
  const cookie = cookieFromText(
    text,
    `cookie file ${path}`,
    "put a cookie in it (`nodectl cookie new`), or delete it to have one generated",
  );
  return { cookie, source: "file", path, created };
}

// ---------------------------------------------------------------------------------------------
// Files holding secrets (shared with identity.ts and known_nodes.ts)

/** Largest cookie / key / known_nodes file read; anything bigger is not one of ours. */
const MAX_FILE_BYTES = 1024 * 1024;

function errorCode(err: unknown): string | undefined {
  return (err as { code?: unknown } | null)?.code as string | undefined;
}

function describe(err: unknown): string {
  const code = errorCode(err);
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "ENOTDIR") return "a parent is not a directory";
  if (code === "EISDIR") return "it is a directory";
  if (code === "ELOOP") return "too many symbolic links";
  return code ?? (err instanceof Error ? err.message : String(err));
}

/**
 * Creates `dir` (and missing parents) with mode 0700 if it does not exist; an existing
 * directory is left as it is. Throws ConfigError when it cannot.
 */
export function ensurePrivateDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new ConfigError(`cannot create directory ${dir}: ${describe(err)}`);
  }
}

/**
 * Reads a file that must be private to its owner, like ssh reads a key: undefined when it does
 * not exist; ConfigError when it is not a regular file, is accessible by group or others (with
 * the `chmod 600` that fixes it), is too large, is not UTF-8, or cannot be read. The check is
 * made on the open file, so the file checked is the file read. `what` names it in messages.
 */
export function readPrivateFile(path: string, what: string): string | undefined {
  return readCheckedFile(path, what, 0o077);
}

/**
 * Reads a file like `readPrivateFile`, refusing it when any bit of `forbiddenMode` is set in
 * its permissions (0o077: private; 0o022: not writable by others).
 */
export function readCheckedFile(
  path: string,
  what: string,
  forbiddenMode: number,
): string | undefined {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO planted at the path is refused below instead of hanging the open.
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    if (errorCode(err) === "ENOENT") return undefined;
    throw new ConfigError(`cannot read ${what} ${path}: ${describe(err)}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new ConfigError(`${what} ${path} is not a regular file`);
    const mode = st.mode & 0o777;
    if ((mode & forbiddenMode) !== 0) {
      const who = (forbiddenMode & 0o044) !== 0 ? "accessible" : "writable";
      throw new ConfigError(
        `${what} ${path} is ${who} by other users (mode 0${mode.toString(8)}): `
          + `run \`chmod 600 ${path}\``,
      );
    }
    if (st.size > MAX_FILE_BYTES) {
      throw new ConfigError(`${what} ${path} is too large (${st.size} bytes) to be one`);
    }
    // Read to end of file, not to the size seen: an append-only file may grow meanwhile.
    let buf = new Uint8Array(st.size + 4096);
    let length = 0;
    for (;;) {
      if (length === buf.length) {
        if (buf.length > MAX_FILE_BYTES) {
          throw new ConfigError(`${what} ${path} is too large to be one`);
        }
        const bigger = new Uint8Array(buf.length * 2);
        bigger.set(buf);
        buf.fill(0);
        buf = bigger;
      }
      const got = readSync(fd, buf, length, buf.length - length, null);
      if (got === 0) break;
      length += got;
    }
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(0, length));
    } catch {
      throw new ConfigError(`${what} ${path} is not UTF-8 text`);
    } finally {
      buf.fill(0);
    }
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`cannot read ${what} ${path}: ${describe(err)}`);
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let offset = 0;
  while (offset < bytes.length) {
    offset += writeSync(fd, bytes, offset, bytes.length - offset);
  }
}

/**
 * Creates `path` holding `content`, mode 0600 from the moment it exists, only if it does not
 * exist yet; true when this call created it, false when it already existed (someone else won).
 * The content is written to a fresh 0600 temporary file in the same directory and hard-linked
 * into place, so no reader ever sees a partial file and two racing creators cannot both win.
 * On a file system without hard links it falls back to an exclusive create written in place.
 */
export function writeFileExclusive(path: string, content: string, what: string): boolean {
  const bytes = new TextEncoder().encode(content);
  const nonce = Buffer.from(randomBytes(6)).toString("hex");
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${nonce}.tmp`);
  try {
    writeNewFile(temp, bytes);
    try {
      linkSync(temp, path);
      return true;
    } catch (err) {
      const code = errorCode(err);
      if (code === "EEXIST") return false;
      if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP" && code !== "ENOSYS") {
        throw err;
      }
    }
    try {
      writeNewFile(path, bytes);
      return true;
    } catch (err) {
      if (errorCode(err) === "EEXIST") return false;
      throw err;
    }
  } catch (err) {
    throw new ConfigError(`cannot create ${what} ${path}: ${describe(err)}`);
  } finally {
    bytes.fill(0);
    try {
      unlinkSync(temp);
    } catch { /* never created, or already gone */ }
  }
}

/** Writes `bytes` to a file that must not exist yet, created 0600, and syncs it. */
export function writeNewFile(path: string, bytes: Uint8Array): void {
  const flags = fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_WRONLY
    | fsConstants.O_NOFOLLOW;
  const fd = openSync(path, flags, 0o600);
  try {
    writeAll(fd, bytes);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    try {
      unlinkSync(path);
    } catch { /* best effort */ }
    throw err;
  }
  closeSync(fd);
}
