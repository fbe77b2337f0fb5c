// Test helper: `node --import <this file> …` appends "<pid> <url>" to $EVIE_TEST_LOAD_LOG for
// every ES module Node's own loader loads whose URL contains $EVIE_TEST_LOAD_MATCH.
// (A module loaded through jiti's transform, not Node's loader, is not seen: on purpose.)
import { appendFileSync } from "node:fs";
import { register } from "node:module";
import { isMainThread } from "node:worker_threads";

if (isMainThread) register(import.meta.url); // this same file provides the load hook

export async function load(url, context, nextLoad) {
	const match = process.env.EVIE_TEST_LOAD_MATCH;
	if (match && url.includes(match)) {
		appendFileSync(process.env.EVIE_TEST_LOAD_LOG, `${process.pid} ${url}\n`);
	}
	return nextLoad(url, context);
}
