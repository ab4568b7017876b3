/**
 * Byte-array helpers shared by the transport modules.
 *
 * @module
 */

/** `parts` back to back in one fresh array (a copy even when there is a single part). */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
