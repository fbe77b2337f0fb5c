// evie's warm-up extension for pi (adr/0016 part 8: a spare does pi's first-prompt work).
//
// pi loads a model provider's module (and with it the provider's SDK, e.g. the
// OpenAI client library) only when the first prompt is streamed, and Node builds
// its fetch implementation on the first fetch() call: on a 2-core machine that is
// most of the 100-250 ms between a fresh pi's first prompt and its request to the
// model. evie boots spare pi processes ahead of need, so it has this file loaded
// (`pi --no-extensions --extension <this file>`) to do that work while the spare
// waits. It never contacts the model or any other host.
//
// - It is a .mjs file on purpose: pi loads extensions through jiti, which imports
//   a .mjs file with Node's own ESM loader, so the import() below lands in the
//   same module cache as pi-ai's lazy `import("./openai-completions.js")`.
// - It finds pi-ai from pi's own entry point (process.argv[1]) and imports the
//   provider through pi-ai's published subpath exports (package.json "exports").
// - It must never stop pi from starting: every failure is swallowed, and the
//   warm-up is bounded in time. It writes one line to stderr saying what it did
//   (evie keeps pi's stderr tail; tests read it).
// - For the APIs in LOOPBACK (chat completions, Anthropic's messages, OpenAI's responses
//   and its Azure client, Gemini and Vertex, Mistral's) it also streams one reply through pi-ai from
//   its own 127.0.0.1 server in that API's format: the SDK's client, its stream parser
//   and Node's HTTP client run once before the user's first prompt. The server answers
//   whatever path it is asked with that reply; the URL given to the SDK never leaves it.
// - Bedrock's reply goes through the AWS SDK's client itself, not pi-ai: pi-ai lets the
//   SDK look up settings and credentials in the user's AWS config, and the warm-up must
//   not read it. Every setting that the SDK would look up is given (dummy credentials),
//   and it speaks the HTTP version pi-ai will (2 unless AWS_BEDROCK_FORCE_HTTP1=1).

import { existsSync, readFileSync, realpathSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createHttp2Server } from "node:http2";
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// a model's `api` (models.md) -> the pi-ai subpath export of its provider module
const PROVIDER_EXPORTS = {
	"anthropic-messages": "./anthropic",
	"openai-completions": "./openai-completions",
	"openai-responses": "./openai-responses",
	"azure-openai-responses": "./azure-openai-responses",
	"openai-codex-responses": "./openai-codex-responses",
	"google-generative-ai": "./google",
	"google-vertex": "./google-vertex",
	"mistral-conversations": "./mistral",
	"bedrock-converse-stream": "./bedrock-provider",
};
const LIMIT_MS = 10_000;
const warmed = new Map(); // api -> Promise (one warm-up per api and process; survives switch_session)
let fetchReady;

function piAiDir() {
	const entry = process.argv[1];
	if (!entry) return undefined;
	const require = createRequire(realpathSync(entry));
	for (const base of require.resolve.paths("@mariozechner/pi-ai") ?? []) {
		const dir = join(base, "@mariozechner", "pi-ai");
		if (existsSync(join(dir, "package.json"))) return dir;
	}
	return undefined;
}

function exportUrl(dir, subpath) {
	const target = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).exports?.[subpath];
	const file = typeof target === "string" ? target : (target?.import ?? target?.default);
	return typeof file === "string" ? pathToFileURL(join(dir, file)).href : undefined;
}

const PROXY_VARS = ["http_proxy", "https_proxy", "all_proxy"];

function proxyConfigured() {
	return PROXY_VARS.some((name) => process.env[name] || process.env[name.toUpperCase()]);
}

// One short reply in each API's own stream format, as its SDK expects to read it.
function sse(name, data) {
	return `${name ? `event: ${name}\n` : ""}data: ${JSON.stringify(data)}\n\n`;
}

function openaiReply() {
	const chunk = (delta, finish) => ({
		id: "evie-warmup",
		object: "chat.completion.chunk",
		created: 0,
		model: "warmup",
		choices: [{ index: 0, delta, finish_reason: finish }],
	});
	return [
		sse("", chunk({ role: "assistant", content: "" }, null)),
		sse("", chunk({ content: "ok" }, null)),
		sse("", chunk({}, "stop")),
		"data: [DONE]\n\n",
	].join("");
}

function anthropicReply() {
	const usage = { input_tokens: 1, output_tokens: 1 };
	const message = { id: "evie-warmup", type: "message", role: "assistant", model: "warmup" };
	const events = [
		{ type: "message_start", message: { ...message, content: [], stop_reason: null, usage } },
		{ type: "content_block_start", index: 0, content_block: { type: "text", text: "" } },
		{ type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "ok" } },
		{ type: "content_block_stop", index: 0 },
		{ type: "message_delta", delta: { stop_reason: "end_turn", stop_sequence: null }, usage },
		{ type: "message_stop" },
	];
	return events.map((event) => sse(event.type, event)).join("");
}

function responsesReply() {
	const response = { id: "evie-warmup", object: "response", model: "warmup", output: [] };
	const text = { type: "output_text", text: "ok", annotations: [] };
	const item = { id: "msg_evie_warmup", type: "message", role: "assistant" };
	const usage = { input_tokens: 1, output_tokens: 1, total_tokens: 2 };
	const done = { ...item, status: "completed", content: [text] };
	const events = [
		{ type: "response.created", response: { ...response, status: "in_progress" } },
		{ type: "response.output_item.added", output_index: 0, item: { ...item, content: [] } },
		{ type: "response.content_part.added", output_index: 0, content_index: 0, part: { ...text, text: "" } },
		{ type: "response.output_text.delta", output_index: 0, content_index: 0, delta: "ok" },
		{ type: "response.output_item.done", output_index: 0, item: done },
		{ type: "response.completed", response: { ...response, status: "completed", output: [done], usage } },
	];
	return events.map((event) => sse(event.type, event)).join("");
}

function geminiReply() {
	const chunk = {
		candidates: [{ content: { role: "model", parts: [{ text: "ok" }] }, finishReason: "STOP", index: 0 }],
		usageMetadata: { promptTokenCount: 1, candidatesTokenCount: 1, totalTokenCount: 2 },
		responseId: "evie-warmup",
	};
	return `data: ${JSON.stringify(chunk)}\r\n\r\n`;
}

function mistralReply() {
	// Mistral's SDK validates each chunk (id, model, choices[].index/delta/finish_reason)
	const chunk = (delta, finish, extra) => ({
		id: "evie-warmup",
		object: "chat.completion.chunk",
		model: "warmup",
		choices: [{ index: 0, delta, finish_reason: finish }],
		...extra,
	});
	const usage = { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 };
	return [
		sse("", chunk({ role: "assistant", content: "" }, null)),
		sse("", chunk({ content: "ok" }, null)),
		sse("", chunk({ content: "" }, "stop", { usage })),
		"data: [DONE]\n\n",
	].join("");
}

// AWS's event-stream framing (Bedrock): prelude (total length, headers length, its
// CRC32), string headers, the JSON payload, the CRC32 of all before it.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
	let c = n;
	for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
	return c >>> 0;
});

function crc32(bytes) {
	let c = 0xffffffff;
	for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
	return (c ^ 0xffffffff) >>> 0;
}

function eventMessage(type, payload) {
	const headers = [
		[":event-type", type],
		[":content-type", "application/json"],
		[":message-type", "event"],
	].map(([name, value]) => {
		const [n, v] = [Buffer.from(name), Buffer.from(value)];
		const head = Buffer.alloc(n.length + 4);
		head[0] = n.length;
		n.copy(head, 1);
		head[n.length + 1] = 7; // a string
		head.writeUInt16BE(v.length, n.length + 2);
		return Buffer.concat([head, v]);
	});
	const [head, body] = [Buffer.concat(headers), Buffer.from(JSON.stringify(payload))];
	const prelude = Buffer.alloc(12);
	prelude.writeUInt32BE(16 + head.length + body.length, 0);
	prelude.writeUInt32BE(head.length, 4);
	prelude.writeUInt32BE(crc32(prelude.subarray(0, 8)), 8);
	const message = Buffer.concat([prelude, head, body]);
	const crc = Buffer.alloc(4);
	crc.writeUInt32BE(crc32(message), 0);
	return Buffer.concat([message, crc]);
}

function bedrockReply() {
	return Buffer.concat([
		eventMessage("messageStart", { role: "assistant" }),
		eventMessage("contentBlockDelta", { contentBlockIndex: 0, delta: { text: "ok" } }),
		eventMessage("contentBlockStop", { contentBlockIndex: 0 }),
		eventMessage("messageStop", { stopReason: "end_turn" }),
		eventMessage("metadata", { usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 }, metrics: { latencyMs: 1 } }),
	]);
}

// pi-ai's switch to the SDK's HTTP/1.1 handler (some endpoints need it)
const bedrockHttp1 = () => process.env.AWS_BEDROCK_FORCE_HTTP1 === "1";

// One reply through the AWS SDK's Bedrock client (the one pi-ai imports), with every
// setting it would otherwise read from ~/.aws given here, over the HTTP version pi-ai uses.
async function bedrockCall(model, baseUrl, dir) {
	const require = createRequire(join(dir, "package.json"));
	const load = (name) => import(pathToFileURL(require.resolve(name)).href);
	const sdk = await load("@aws-sdk/client-bedrock-runtime");
	const handler = bedrockHttp1() && new (await load("@smithy/node-http-handler")).NodeHttpHandler();
	const client = new sdk.BedrockRuntimeClient({
		...(handler && { requestHandler: handler }),
		endpoint: baseUrl,
		region: "us-east-1",
		credentials: { accessKeyId: "evie-warmup", secretAccessKey: "evie-warmup" },
		maxAttempts: 1,
		retryMode: "standard",
		defaultsMode: "standard",
		useDualstackEndpoint: false,
		useFipsEndpoint: false,
		disableClockSkewCorrection: false,
		authSchemePreference: ["sigv4"],
		requestChecksumCalculation: "WHEN_REQUIRED",
		responseChecksumValidation: "WHEN_REQUIRED",
		userAgentAppId: "",
	});
	try {
		const messages = [{ role: "user", content: [{ text: "hi" }] }];
		const response = await client.send(new sdk.ConverseStreamCommand({ modelId: model.id, messages }));
		let stop;
		for await (const item of response.stream) stop = item.messageStop?.stopReason ?? stop;
		return stop === "end_turn" ? "stop" : String(stop);
	} finally {
		client.destroy();
	}
}

// a model's `api` -> the base URL path its SDK is given, and the reply it reads. Each
// provider takes the URL from the model (`own` below), except Azure's, where
// AZURE_OPENAI_BASE_URL / _RESOURCE_NAME win over it: there the URL also goes in the
// options, which only pi-ai's `stream` (not `streamSimple`) passes on.
const LOOPBACK = {
	"openai-completions": { path: "/v1", reply: openaiReply },
	"anthropic-messages": { path: "", reply: anthropicReply },
	"openai-responses": { path: "/v1", reply: responsesReply },
	"azure-openai-responses": {
		path: "/openai/v1",
		reply: responsesReply,
		options: (url) => ({ azureBaseUrl: url, azureApiVersion: "v1" }),
	},
	"google-generative-ai": { path: "/v1beta", reply: geminiReply },
	"google-vertex": { path: "/v1", reply: geminiReply },
	"mistral-conversations": { path: "", reply: mistralReply },
	"bedrock-converse-stream": {
		path: "",
		reply: bedrockReply,
		type: "application/vnd.amazon.eventstream",
		http2: () => !bedrockHttp1(), // the AWS SDK's default handler: HTTP/2 (cleartext here)
		call: bedrockCall,
	},
};

// One streamed reply through pi-ai, from our own server on 127.0.0.1 speaking `api`.
async function loopbackStream(ai, model, dir) {
	const { path, reply: format, options, type, http2, call: direct } = LOOPBACK[model.api];
	const body = format();
	const server = (http2?.() ? createHttp2Server : createServer)((request, response) => {
		request.resume();
		request.on("end", () => {
			response.writeHead(200, { "content-type": type ?? "text/event-stream" });
			response.end(body);
		});
	});
	await new Promise((resolve, reject) => {
		server.once("error", reject);
		server.listen(0, "127.0.0.1", resolve);
	});
	try {
		const baseUrl = `http://127.0.0.1:${server.address().port}${path}`;
		if (direct) {
			const stop = await direct(model, baseUrl, dir);
			return stop === "stop" ? "loopback stream" : `loopback stream ${stop}`;
		}
		const own = { ...model, provider: "evie-warmup", baseUrl, headers: {} };
		const context = { messages: [{ role: "user", content: "hi", timestamp: Date.now() }] };
		const key = { apiKey: "evie-warmup" };
		const call = options
			? ai.stream(own, context, { ...key, ...options(baseUrl) })
			: ai.streamSimple(own, context, key);
		const reply = await call.result();
		return reply.stopReason === "stop" ? "loopback stream" : `loopback stream ${reply.stopReason}`;
	} finally {
		server.close();
		server.closeAllConnections?.(); // (an HTTP/2 server has none: close() ends its sessions)
	}
}

async function warmFetch() {
	// Node loads and compiles its fetch implementation (undici) on the first call;
	// a data: URL goes through it without any network.
	fetchReady ??= fetch("data:,").then((r) => r.arrayBuffer());
	await fetchReady;
}

async function warmUp(model) {
	const started = performance.now();
	const { api } = model;
	const dir = piAiDir();
	const url = dir && PROVIDER_EXPORTS[api] && exportUrl(dir, PROVIDER_EXPORTS[api]);
	const parts = [];
	if (url) {
		await import(url);
		parts.push(`provider ${api}`);
	} else {
		parts.push(`no provider module known for api ${api}`);
	}
	await warmFetch();
	parts.push("fetch");
	const main = dir && exportUrl(dir, ".");
	if (LOOPBACK[api] && main && !proxyConfigured()) {
		parts.push(await loopbackStream(await import(main), model, dir));
	}
	return `${parts.join(", ")} ready in ${(performance.now() - started).toFixed(0)} ms`;
}

function warm(model) {
	const api = model?.api;
	if (typeof api !== "string") return Promise.resolve();
	let done = warmed.get(api);
	if (!done) {
		let timer;
		const limit = new Promise((resolve) => {
			timer = setTimeout(() => resolve(`gave up after ${LIMIT_MS} ms`), LIMIT_MS);
			timer.unref?.();
		});
		done = Promise.race([warmUp(model), limit])
			.catch((error) => `failed: ${error instanceof Error ? error.message : String(error)}`)
			.then((outcome) => {
				clearTimeout(timer);
				process.stderr.write(`evie-warmup: ${outcome}\n`);
			});
		warmed.set(api, done);
	}
	return done;
}

export default function evieWarmup(pi) {
	// A throw here would fail the extension's load, and pi exits when an extension fails
	// to load: whatever this pi's extension API looks like, registering must not throw.
	try {
		// session_start is awaited by pi before it reports itself ready, so a spare that
		// answers get_state has already done the work; after switch_session it is a no-op.
		pi.on("session_start", async (_event, ctx) => {
			try {
				await warm(ctx.model);
			} catch {
				// never stop pi for an optimisation
			}
		});
		pi.on("model_select", (event) => {
			try {
				void warm(event.model);
			} catch {
				// never stop pi for an optimisation
			}
		});
	} catch (error) {
		process.stderr.write(`evie-warmup: not registered: ${error?.message ?? error}\n`);
	}
}
