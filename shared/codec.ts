import { ProtocolError } from "./errors.js";

interface Decoder<T> {
  decode(input: Uint8Array): T;
}
interface Encoder<T> {
  encode(message: T): { finish(): Uint8Array };
  fromPartial(object: any): T;
}

/** Decodes a NATS payload; a garbled message from a misbehaving peer becomes a ProtocolError. */
export function decodeMessage<T>(type: Decoder<T>, subject: string, data: Uint8Array): T {
  try {
    return type.decode(data);
  } catch (err) {
    throw new ProtocolError(subject, `cannot decode ${data.length} bytes: ${(err as Error).message}`, { cause: err });
  }
}

export function encodeMessage<T>(type: Encoder<T>, message: Partial<T>): Uint8Array {
  return type.encode(type.fromPartial(message)).finish();
}
