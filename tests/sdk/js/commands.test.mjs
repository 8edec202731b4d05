// execd's /ping and /command routes, driven through the OpenSandbox npm SDK
// (@alibaba-group/opensandbox, version pinned in package.json).
//
// Each test starts its own daemon: the binary from $EXECD_BIN or
// <repo>/target/debug/execd, on 127.0.0.1 and an ephemeral port, and stops it
// with SIGTERM afterwards. The SDK's execd stack is built the way the SDK
// builds it after resolving a sandbox endpoint, just pointed straight at the
// daemon's address.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

import {
  ConnectionConfig,
  DefaultAdapterFactory,
  SandboxApiException,
} from "@alibaba-group/opensandbox";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "..", "..", "..");
const execdBin = process.env.EXECD_BIN || join(repoRoot, "target", "debug", "execd");

const STARTUP_DEADLINE_MS = 20_000;
const SHUTDOWN_DEADLINE_MS = 15_000;

/** Start execd; resolves to { addr, stop() } once it printed its address. */
async function startDaemon(extraArgs = []) {
  assert.ok(existsSync(execdBin), `execd binary not found at ${execdBin}; run cargo build or set EXECD_BIN`);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("EXECD_")));
  const child = spawn(execdBin, ["--port", "0", "--bind", "127.0.0.1", ...extraArgs], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d) => {
    stderr += d;
  });
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));

  const addr = await new Promise((res, rej) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rej(new Error(`execd did not print its address within ${STARTUP_DEADLINE_MS} ms\n${stderr}`));
    }, STARTUP_DEADLINE_MS);
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      clearTimeout(timer);
      const m = /^execd listening on (\S+)$/.exec(line.trim());
      if (m) res(m[1]);
      else rej(new Error(`unexpected first line from execd: ${JSON.stringify(line)}`));
      // Keep reading so the daemon never blocks on a full stdout pipe.
      lines.on("line", () => {});
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`execd exited (${code ?? signal}) before printing its address\n${stderr}`));
    });
  });

  async function stop() {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    let timer;
    const outcome = await Promise.race([
      exited,
      new Promise((res) => {
        timer = setTimeout(() => res(null), SHUTDOWN_DEADLINE_MS);
      }),
    ]);
    clearTimeout(timer);
    if (outcome === null) {
      child.kill("SIGKILL");
      await exited;
      throw new Error(`execd did not exit within ${SHUTDOWN_DEADLINE_MS} ms of SIGTERM\n${stderr}`);
    }
    return outcome;
  }

  return { addr, stop, stderr: () => stderr };
}

/** The SDK's execd stack (commands, health, files, metrics) for one address. */
function execdStack(addr, token) {
  const connectionConfig = new ConnectionConfig({ protocol: "http", requestTimeoutSeconds: 30 }).withTransportIfMissing();
  const stack = new DefaultAdapterFactory().createExecdStack({
    connectionConfig,
    execdBaseUrl: `http://${addr}`,
    endpointHeaders: token ? { "X-EXECD-ACCESS-TOKEN": token } : {},
  });
  return { ...stack, close: () => connectionConfig.closeTransport() };
}

/** Run `body(ctx)` against a fresh daemon and SDK stack, always cleaning up. */
async function withExecd(opts, body) {
  const token = opts.token ? randomBytes(16).toString("hex") : undefined;
  const daemon = await startDaemon(token ? ["--access-token", token] : []);
  const sdk = execdStack(daemon.addr, token);
  try {
    await body({ sdk, daemon, token });
  } finally {
    await sdk.close();
    await daemon.stop();
  }
}

async function waitUntil(probe, what, deadlineMs = 15_000) {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() >= end) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const joined = (msgs) => msgs.map((m) => m.text).join("");

test("ping", async () => {
  await withExecd({}, async ({ sdk }) => {
    assert.equal(await sdk.health.ping(), true);
  });
});

test("foreground run: separate stdout/stderr, handlers and exit code 0", async () => {
  await withExecd({}, async ({ sdk }) => {
    const seen = { out: [], err: [], init: [], complete: 0 };
    const ex = await sdk.commands.run(
      "printf 'one\\n'; printf 'oops\\n' >&2; printf 'two\\n\\nthree\\n'",
      { timeoutSeconds: 60 },
      {
        onStdout: (m) => seen.out.push(m),
        onStderr: (m) => seen.err.push(m),
        onInit: (i) => seen.init.push(i.id),
        onExecutionComplete: () => {
          seen.complete += 1;
        },
      },
    );
    assert.equal(ex.exitCode, 0);
    assert.equal(ex.error, undefined);
    assert.ok(ex.complete);
    assert.ok(ex.id);
    assert.deepEqual(seen.init, [ex.id]);
    assert.equal(seen.complete, 1);
    assert.equal(joined(seen.out), "one\ntwo\n\nthree\n");
    assert.equal(joined(seen.err), "oops\n");
    assert.ok(seen.out.every((m) => m.isError === false));
    assert.ok(seen.err.every((m) => m.isError === true));
    assert.equal(joined(ex.logs.stdout), "one\ntwo\n\nthree\n");
    assert.equal(joined(ex.logs.stderr), "oops\n");
  });
});

test("foreground run: non-zero and signal exit codes, envs and cwd", async () => {
  await withExecd({}, async ({ sdk }) => {
    const three = await sdk.commands.run("echo partial; exit 3", { timeoutSeconds: 60 });
    assert.equal(three.exitCode, 3);
    assert.equal(three.error?.value, "3");
    assert.equal(three.complete, undefined);
    assert.equal(joined(three.logs.stdout), "partial\n");

    const killed = await sdk.commands.run("kill -KILL $$", { timeoutSeconds: 60 });
    assert.equal(killed.exitCode, -1);
    assert.ok(killed.error);

    const dir = realpathSync(mkdtempSync(join(tmpdir(), "execd-js-")));
    try {
      const env = await sdk.commands.run("printf '%s|%s' \"$GREETING\" \"$(pwd)\"", {
        timeoutSeconds: 60,
        envs: { GREETING: "héllo wörld ✓" },
        workingDirectory: dir,
      });
      assert.equal(env.exitCode, 0);
      assert.equal(joined(env.logs.stdout), `héllo wörld ✓|${dir}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test("timeout kills a sleeping command", async () => {
  await withExecd({}, async ({ sdk }) => {
    const ex = await sdk.commands.run("echo begun; sleep 600; echo survived", { timeoutSeconds: 1 });
    assert.equal(joined(ex.logs.stdout), "begun\n");
    assert.ok(ex.error);
    assert.notEqual(ex.exitCode, 0);
    assert.notEqual(ex.exitCode, null);
  });
});

test("background command: status and logs with a cursor", async () => {
  await withExecd({}, async ({ sdk }) => {
    const command = "printf 'alpha\\n'; printf 'beta\\n' >&2; exit 6";
    const ex = await sdk.commands.run(command, { background: true });
    assert.ok(ex.id);
    assert.ok(ex.complete);

    const status = await waitUntil(async () => {
      const st = await sdk.commands.getCommandStatus(ex.id);
      return st.running === false ? st : null;
    }, "background command to finish");
    assert.equal(status.id, ex.id);
    assert.equal(status.content, command);
    assert.equal(status.exitCode, 6);
    assert.ok(status.startedAt instanceof Date);
    assert.ok(status.finishedAt instanceof Date);
    assert.ok(status.finishedAt.getTime() >= status.startedAt.getTime());

    // stdout and stderr are combined; writes to the two pipes back to back may
    // be logged in either order (documented), so check the bytes, not the order.
    const whole = await sdk.commands.getBackgroundCommandLogs(ex.id, 0);
    const lines = whole.content.split(/(?<=\n)/);
    assert.deepEqual([...lines].sort(), ["alpha\n", "beta\n"]);
    assert.equal(whole.cursor, "alpha\nbeta\n".length);
    const tail = await sdk.commands.getBackgroundCommandLogs(ex.id, lines[0].length);
    assert.equal(tail.content, lines[1]);
    assert.equal(tail.cursor, whole.cursor);
  });
});

test("background command: running status, then interrupt", async () => {
  await withExecd({}, async ({ sdk }) => {
    const ex = await sdk.commands.run("echo waiting; sleep 600", { background: true });
    await waitUntil(
      async () => (await sdk.commands.getBackgroundCommandLogs(ex.id, 0)).content === "waiting\n",
      "background output",
    );
    const running = await sdk.commands.getCommandStatus(ex.id);
    assert.equal(running.running, true);
    assert.equal(running.exitCode, null);
    assert.equal(running.finishedAt, null);

    await sdk.commands.interrupt(ex.id);
    const stopped = await waitUntil(async () => {
      const st = await sdk.commands.getCommandStatus(ex.id);
      return st.running === false ? st : null;
    }, "interrupted command to stop");
    assert.notEqual(stopped.exitCode, null);
    assert.notEqual(stopped.exitCode, 0);
    assert.ok(stopped.finishedAt instanceof Date);
  });
});

test("foreground command interrupted while streaming", async () => {
  await withExecd({}, async ({ sdk }) => {
    let markStarted;
    const started = new Promise((r) => {
      markStarted = r;
    });
    let id;
    const run = sdk.commands.run("echo go; sleep 600; echo survived", { timeoutSeconds: 600 }, {
      onInit: (i) => {
        id = i.id;
      },
      onStdout: (m) => {
        if (m.text === "go\n") markStarted();
      },
    });
    await started;
    await sdk.commands.interrupt(id);
    const ex = await run;
    assert.equal(ex.id, id);
    assert.equal(joined(ex.logs.stdout), "go\n");
    assert.ok(ex.error);
    assert.notEqual(ex.exitCode, 0);
    const st = await sdk.commands.getCommandStatus(id);
    assert.equal(st.running, false);
  });
});

test("unknown command id is an API error", async () => {
  await withExecd({}, async ({ sdk }) => {
    await assert.rejects(
      sdk.commands.getCommandStatus("0123456789abcdef0123456789abcdef"),
      (e) => e instanceof SandboxApiException && e.statusCode === 404,
    );
  });
});

test("access token: accepted with the header, 401 without", async () => {
  await withExecd({ token: true }, async ({ sdk, daemon, token }) => {
    assert.equal(await sdk.health.ping(), true);
    const ex = await sdk.commands.run("echo with-token", { timeoutSeconds: 60 });
    assert.equal(joined(ex.logs.stdout), "with-token\n");
    assert.ok(token);

    const anon = execdStack(daemon.addr, undefined);
    try {
      await assert.rejects(anon.health.ping(), (e) => e instanceof SandboxApiException && e.statusCode === 401);
      await assert.rejects(
        anon.commands.run("echo nope", { timeoutSeconds: 60 }),
        (e) => e instanceof SandboxApiException && e.statusCode === 401,
      );
    } finally {
      await anon.close();
    }
  });
});
