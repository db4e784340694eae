// The official OpenAI Node SDK against `tinygpt serve`'s HTTP API: models,
// unary and streamed completions with n, stop, seed and logprobs, echo with
// logprobs and max_tokens 0, and the error for a bad request. The expected
// greedy text comes from gRPC (tests/python/openai_sdk_test.py passes it in).
// usage: node openai_sdk_test.mjs BASE_URL EXPECTED_JSON   (openai from NODE_PATH)
import OpenAI from "openai";

const [baseURL, expectedJson] = process.argv.slice(2);
const want = JSON.parse(expectedJson);
const client = new OpenAI({ baseURL, apiKey: want.token, maxRetries: 0, timeout: 60000 });
let passed = 0, failed = 0;
function check(name, ok, detail = "") {
  console.log(`${ok ? "PASS" : "FAIL"} ${name}${detail ? ` (${detail})` : ""}`);
  ok ? passed++ : failed++;
}

const models = await client.models.list();
check("models.list: the served model", models.data.length === 1 && models.data[0].id === want.model, JSON.stringify(models.data));

const prompt = want.prompt;
const greedy = await client.completions.create({ model: want.model, prompt, max_tokens: 24, temperature: 0, logprobs: 2 });
const c0 = greedy.choices[0];
check("unary greedy: gRPC's text", c0.text === want.greedy_text, JSON.stringify(c0.text));
check("unary: logprobs in the legacy format", c0.logprobs.tokens.length === 24 && c0.logprobs.token_logprobs.every((x) => x <= 0) &&
      c0.logprobs.top_logprobs.every((t) => Object.keys(t).length >= 1 && Object.keys(t).length <= 3) &&
      c0.logprobs.text_offset[0] === 0);
check("unary: usage", greedy.usage.prompt_tokens === want.prompt_tokens && greedy.usage.completion_tokens === 24);

const sampled = await client.completions.create({ model: want.model, prompt, max_tokens: 12, temperature: 1, n: 3, seed: 5 });
const again = await client.completions.create({ model: want.model, prompt, max_tokens: 12, temperature: 1, n: 3, seed: 5 });
check("n = 3 with a seed: three choices, the same again", sampled.choices.length === 3 &&
      JSON.stringify(sampled.choices.map((c) => c.text)) === JSON.stringify(again.choices.map((c) => c.text)));
check("n = 3 with a seed: gRPC's samples", JSON.stringify(sampled.choices.map((c) => c.text)) === JSON.stringify(want.sampled_texts),
      JSON.stringify(sampled.choices.map((c) => c.text)));

const stopped = await client.completions.create({ model: want.model, prompt, max_tokens: 24, temperature: 0, stop: [want.stop] });
check("stop: finish_reason stop, gRPC's text", stopped.choices[0].finish_reason === "stop" && stopped.choices[0].text === want.stop_text,
      JSON.stringify(stopped.choices[0]));

let text = "", chunks = 0, finish = null, usage = null;
const stream = await client.completions.create({ model: want.model, prompt, max_tokens: 24, temperature: 0, stream: true,
                                                 logprobs: 1, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  for (const c of chunk.choices) {
    text += c.text;
    if (c.finish_reason) finish = c.finish_reason;
  }
  if (chunk.usage) usage = chunk.usage;
  chunks++;
}
check("stream: the text of the unary answer, in several chunks", text === want.greedy_text && chunks > 2, `${chunks} chunks`);
check("stream: finish_reason and include_usage", finish === "length" && usage && usage.completion_tokens === 24);

let perChoice = ["", "", ""];
const nstream = await client.completions.create({ model: want.model, prompt, max_tokens: 12, temperature: 1, n: 3, seed: 5, stream: true });
for await (const chunk of nstream) for (const c of chunk.choices) perChoice[c.index] += c.text;
check("stream n = 3: each choice's text equals the unary sample", JSON.stringify(perChoice) === JSON.stringify(want.sampled_texts));

const scored = await client.completions.create({ model: want.model, prompt, max_tokens: 0, echo: true, logprobs: 1 });
const lp = scored.choices[0].logprobs;
check("echo + logprobs + max_tokens 0: the prompt and its logprobs, the first null",
      scored.choices[0].text === prompt && lp.token_logprobs[0] === null && lp.tokens.length === want.prompt_tokens &&
      lp.token_logprobs.slice(1).every((x, i) => Math.abs(x - want.prompt_logprobs[i]) < 1e-5) && scored.usage.completion_tokens === 0,
      JSON.stringify(lp.token_logprobs));

try {
  await client.completions.create({ model: want.model, prompt, max_tokens: 4, temperature: 7 });
  check("a bad request: BadRequestError", false, "no error");
} catch (e) {
  check("a bad request: BadRequestError 400 naming the field", e instanceof OpenAI.BadRequestError && e.status === 400 &&
        e.error?.param === "temperature" && e.message.includes("temperature"), `${e.constructor.name} ${e.status} ${e.message}`);
}
try {
  await client.completions.create({ model: "gpt-4", prompt, max_tokens: 4 });
  check("an unknown model: NotFoundError", false, "no error");
} catch (e) {
  check("an unknown model: NotFoundError 404", e instanceof OpenAI.NotFoundError && e.status === 404, `${e.status}`);
}
const anonymous = new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 });
try {
  await anonymous.models.list();
  check("a wrong key: AuthenticationError", false, "no error");
} catch (e) {
  check("a wrong key: AuthenticationError 401", e instanceof OpenAI.AuthenticationError && e.status === 401, `${e.status}`);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
