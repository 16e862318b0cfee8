import { test } from "node:test";
import assert from "node:assert/strict";
import { decode } from "fast-png";
import { crc32, encodePng } from "../../worker/inference/png.js";

function image(width: number, height: number, pixel: (x: number, y: number, c: number) => number): Uint8Array {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = pixel(x, y, c);
  return data;
}

test("png - CRC-32 matches the standard check value", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assert.equal(crc32(new Uint8Array(0)), 0);
});

test("png - gradients, noise and odd sizes round-trip through a PNG decoder", () => {
  let state = 7;
  const noise = () => ((state = (state * 1103515245 + 12345) >>> 0) >>> 24) & 0xff;
  const cases = [
    { width: 1, height: 1, data: Uint8Array.of(10, 200, 30) },
    { width: 3, height: 2, data: image(3, 2, (x, y, c) => x * 80 + y * 10 + c) },
    { width: 64, height: 48, data: image(64, 48, (x, y, c) => (c === 0 ? x * 4 : c === 1 ? y * 5 : (x + y) * 2)) },
    { width: 33, height: 17, data: image(33, 17, () => noise()) },
  ];
  for (const img of cases) {
    const png = encodePng(img);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const back = decode(png);
    assert.equal(back.width, img.width);
    assert.equal(back.height, img.height);
    assert.equal(back.channels, 3);
    assert.equal(back.depth, 8);
    assert.deepEqual(Buffer.from(back.data as Uint8Array), Buffer.from(img.data), `${img.width}x${img.height}`);
  }
});

test("png - the same pixels always give the same bytes", () => {
  const img = { width: 40, height: 30, data: image(40, 30, (x, y, c) => (x * y + c * 50) & 0xff) };
  assert.deepEqual(encodePng(img), encodePng({ ...img, data: Uint8Array.from(img.data) }));
});

test("png - a buffer that does not match the size is refused", () => {
  assert.throws(() => encodePng({ width: 4, height: 4, data: new Uint8Array(47) }), /48/);
  assert.throws(() => encodePng({ width: 0, height: 4, data: new Uint8Array(0) }), /bad size/);
});
