// The Restate side of the runbook benchmark (tests/src/bin/bench.rs), as a TypeScript-SDK
// service. The bench copies this file next to its npm install (outside the repository) and runs
// it with `PORT=<port> node service.mjs`.
//
// - `bench/steps {steps, exec}`: `steps` sequential `ctx.run` of an empty closure (a durable
//   no-op step: the SDK resumes after the server has journaled the result), or, with `exec`, of
//   a closure that runs the program `true` (`execFile`, no shell) and waits for it to end;
//   returns when the handler started and the wall-clock instant (ms, sub-ms precision) each
//   step's result was acknowledged.
// - `bench/sleep {ms}`: a durable sleep; returns its deadline and the instant the handler ran on
//   after it, so the bench can compute firing lateness the way it does for `runbook`.

// Node 20 lacks Promise.withResolvers, which the SDK uses.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const restate = await import("@restatedev/restate-sdk");
const { execFile } = await import("node:child_process");

// Runs `true` and resolves when it has ended (rejects if it failed).
const runTrue = () =>
  new Promise((resolve, reject) =>
    execFile("true", (error) => (error ? reject(error) : resolve())),
  );

const now = () => performance.timeOrigin + performance.now();

const bench = restate.service({
  name: "bench",
  handlers: {
    steps: async (ctx, input) => {
      const started = now();
      const acked = [];
      const step = input.exec ? runTrue : () => {};
      for (let i = 0; i < input.steps; i++) {
        await ctx.run(step);
        acked.push(now());
      }
      return { started, acked };
    },
    sleep: async (ctx, input) => {
      // The deadline is journaled (ctx.date.now is a durable step), as `runbook` journals it.
      const deadline = (await ctx.date.now()) + input.ms;
      await ctx.sleep(input.ms);
      return { deadline, woke: now() };
    },
  },
});

const port = Number(process.env.PORT ?? 9080);
restate.serve({ services: [bench], port });
