// Preloaded into Taskmaster by bench/local.py (NODE_OPTIONS=--require): every TCP connection that
// is not to a loopback address is refused before it is made, and reported on stderr as one line
// `loopback-only: refused HOST:PORT`, which the benchmark counts. Taskmaster then talks only to
// fake-llm: no telemetry, no update check, no other network, whatever its configuration says.
"use strict";
const net = require("node:net");

const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost", "::ffff:127.0.0.1"]);
const connect = net.Socket.prototype.connect;

function target(args) {
	const first = Array.isArray(args[0]) ? args[0][0] : args[0];
	if (first !== null && typeof first === "object") {
		if (first.path) return null; // a Unix socket is local
		return { host: first.host || "localhost", port: first.port };
	}
	if (typeof first === "string" && Number.isNaN(Number(first))) return null; // a Unix socket path
	return { host: typeof args[1] === "string" ? args[1] : "localhost", port: first };
}

net.Socket.prototype.connect = function (...args) {
	const to = target(args);
	if (to === null || LOOPBACK.has(String(to.host).replace(/^\[|\]$/g, "")) || /^127\./.test(to.host)) {
		return connect.apply(this, args);
	}
	process.stderr.write(`loopback-only: refused ${to.host}:${to.port}\n`);
	const error = Object.assign(new Error(`loopback-only: connection to ${to.host}:${to.port} refused`), {
		code: "ECONNREFUSED",
	});
	process.nextTick(() => this.destroy(error));
	return this;
};
