// Calls the user service through the gateway with the client `vsp codegen typescript` generated
// from its description (`./users_client`): a unary call, a typed error, an optional argument, a
// server stream (Server-Sent Events), a deadline. Prints one JSON line per check; any failure
// throws. Compiled with `tsc --strict`, run with node: `node codegen_users.js GATEWAY_URL`.

import { DeadlineExceeded, GetUserError, User, UserServiceClient } from "./users_client";

declare const process: { argv: string[]; exitCode?: number };

function report(check: string, value: unknown): void {
  console.log(JSON.stringify({ check, value }));
}

async function main(base: string): Promise<void> {
  const users = new UserServiceClient(base, { timeoutMs: 10_000 });
  const ada: User = await users.createUser({ name: "Ada", email: "ada@example.com" });
  const fetched = await users.getUser({ user_id: ada.id });
  if (fetched.id !== ada.id || fetched.name !== ada.name) throw new Error(`fetched ${JSON.stringify(fetched)}`);
  report("unary", fetched.name);

  try {
    await users.getUser({ user_id: "nobody" });
    throw new Error("get_user('nobody') answered");
  } catch (err) {
    if (!(err instanceof GetUserError)) throw err;
    report("typed_error", [err.status, err.data.NotFound.user_id]);
  }

  const updated = await users.updateUser({ user_id: ada.id, email: "ada@lovelace.org" });
  report("optional_argument", [updated.name, updated.email]);

  // The stream sends the users created from now on: create some while it is open.
  const stream = users.watchUsers({}, { timeoutMs: 10_000 });
  const first = stream.next();
  let seen: IteratorResult<User, void> | undefined;
  for (let n = 0; n < 20; n++) {
    // Created until the stream sees one (it may open after the first creates).
    await users.createUser({ name: `Watcher ${n}`, email: `watcher${n}@example.com` });
    seen = await Promise.race([first, new Promise<undefined>((resolve) => setTimeout(resolve, 500))]);
    if (seen !== undefined) break;
  }
  const item = seen ?? (await first);
  if (item.done === true) throw new Error("the stream ended before its first item");
  report("stream", item.value.name);
  await stream.return(undefined); // leaves early: the gateway cancels the call

  // No user is created while this stream is open: its deadline passes.
  try {
    for await (const user of users.watchUsers({}, { timeoutMs: 200 })) report("deadline", `got ${user.name}`);
    report("deadline", "ended");
  } catch (err) {
    if (!(err instanceof DeadlineExceeded)) throw err;
    report("deadline", err.code);
  }
}

main(process.argv[2]).catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
