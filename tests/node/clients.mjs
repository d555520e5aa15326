// The official `openai` package for Node.js, driven against imagegate by tests/test_e2e_clients.py.
// Usage: node clients.mjs BASE_URL KEY IMAGE OUT_DIR — writes each result image into OUT_DIR and prints
// a JSON summary of what the SDK returned.
import fs from 'node:fs';
import path from 'node:path';
import OpenAI, { toFile } from 'openai';

const [base, key, image, out] = process.argv.slice(2);
const summary = {};

function save(name, result) {
  const item = result.data[0];
  fs.writeFileSync(path.join(out, name), Buffer.from(item.b64_json, 'base64'));
  summary[name] = { size: result.size, revised_prompt: item.revised_prompt, count: result.data.length };
}

const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
save('generated.png', await openai.images.generate({
  model: 'gpt-image-2',
  prompt: 'a poster saying "NODE" on a yellow background',
  size: '1024x1536',
}));
save('edited.png', await openai.images.edit({
  model: 'gpt-image-2',
  image: await toFile(fs.createReadStream(image), 'photo.png', { type: 'image/png' }),
  prompt: 'convert to dark mode',
  size: '1536x1024',
}));

const xhuo = new OpenAI({ baseURL: `${base}/v1/openai`, apiKey: key, maxRetries: 0 });
save('seed003.png', await xhuo.images.edit({
  model: 'gpt-image-2',
  image: [await toFile(fs.createReadStream(image), 'test.png', { type: 'image/png' })],
  prompt: 'Convert this image to dark mode while keeping the layout intact.',
}));

try {
  await new OpenAI({ baseURL: `${base}/v1`, apiKey: 'ig-not-a-key', maxRetries: 0 }).images.generate({ prompt: 'x' });
} catch (error) {
  summary.bad_key = { status: error.status, name: error.constructor.name, code: error.code };
}
console.log(JSON.stringify(summary));
