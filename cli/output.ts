// What commands write to. process.stdout and process.stderr fit; tests pass a string buffer,
// which is why commands never touch the process streams themselves.

export interface Output {
  write(chunk: string): unknown;
  /** Only a terminal gets a redrawn progress bar. */
  isTTY?: boolean;
}

/** An Output that keeps what was written, for tests and for building messages. */
export class BufferOutput implements Output {
  text = "";
  constructor(readonly isTTY = false) {}
  write(chunk: string): boolean {
    this.text += chunk;
    return true;
  }
}
