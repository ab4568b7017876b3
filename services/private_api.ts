/**
 * The public node's typed client for SecretService. It knows only the service and function
 * names and talks through a {@link Caller}; no code of the private node is involved.
 *
 * @module
 */
import { BadArgError } from "../errors.ts";
import { type Caller, typeName } from "./types.ts";

const SERVICE = "SecretService";

/** Typed access to the private node's SecretService. */
export class PrivateAPI {
  /** @param call sends a call to the private node; @param node its name, for messages. */
  /** A client that reaches SecretService on `node` through `call`. */
  constructor(private readonly call: Caller, readonly node: string) {}

  /**
   * The secret under `key`, or the default secret. Errors of the call (NodeDownError,
   * TimeoutError, RemoteError…) pass through; a reply that is not a string is a BadArgError.
   */
  async getData(key?: string): Promise<string> {
    const reply = await this.call(SERVICE, "get_data", key === undefined ? [] : [key]);
    if (typeof reply !== "string") {
      throw new BadArgError(
        `${this.node} answered ${SERVICE}.get_data with ${typeName(reply)}, expected a string`,
      );
    }
    return reply;
  }
}
