// Calls through a VSP gateway: `POST {base}/{service}/{endpoint}` with the arguments' JSON, and
// Server-Sent Events (`Accept: text/event-stream`) for a server stream.

/** A call that failed: `code` says why (`not_found`, `bad_request`, `timeout`, `overloaded`,
 * `service_error`, ...), `status` is the gateway's HTTP status (0 when no answer came). */
export class VspError extends Error {
  constructor(
    readonly code: string,
    readonly detail: string,
    readonly status: number,
  ) {
    super(`${code}: ${detail}`);
    this.name = "VspError";
  }
}

/** The call's deadline passed (the request was aborted; the gateway cancels the call). */
export class DeadlineExceeded extends VspError {
  constructor(detail: string, status = 0) {
    super("timeout", detail, status);
    this.name = "DeadlineExceeded";
  }
}

/** The service refused the call with its typed error, `data` (each endpoint's own subclass
 * types it). */
export class ServiceError<T = unknown> extends VspError {
  constructor(
    code: string,
    detail: string,
    status: number,
    readonly data: T,
  ) {
    super(code, detail, status);
    this.name = "ServiceError";
  }
}

/** Per call: a deadline in milliseconds (the client's by default), a signal to abort it,
 * headers to send (`authorization`, `traceparent`: the gateway forwards them as metadata). */
export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  headers?: Record<string, string>;
}

/** For every call of a client: the default deadline (10 s; 0 for none), headers, and the
 * `fetch` to use. */
export interface ClientOptions {
  timeoutMs?: number;
  headers?: Record<string, string>;
  fetch?: typeof fetch;
}

/** The longest Server-Sent Event read (a gateway that never ends one is refused). */
const MAX_EVENT = 16 * 1024 * 1024;

interface ErrorBody {
  error?: { code?: string; message?: string; data?: unknown };
}

function errorOf(status: number, text: string): VspError {
  let body: ErrorBody = {};
  try {
    body = JSON.parse(text) as ErrorBody;
  } catch {
    return new VspError("http", `${status}: ${text.slice(0, 200)}`, status);
  }
  const error = body.error ?? {};
  const code = error.code ?? "http";
  const message = error.message ?? text.slice(0, 200);
  if (code === "service_error") {
    return new ServiceError(code, message, status, error.data);
  }
  if (code === "timeout") {
    // The gateway or the service saw the deadline pass: the same outcome as the client seeing it.
    return new DeadlineExceeded(message, status);
  }
  return new VspError(code, message, status);
}

export class Gateway {
  private readonly fetcher: typeof fetch;

  constructor(
    readonly baseUrl: string,
    readonly service: string,
    readonly options: ClientOptions = {},
  ) {
    this.fetcher = options.fetch ?? fetch;
  }

  private url(endpoint: string): string {
    const base = this.baseUrl.replace(/\/+$/, "");
    return `${base}/${encodeURIComponent(this.service)}/${encodeURIComponent(endpoint)}`;
  }

  /** An abort signal that fires at the deadline or with the caller's, and how to let go of it. */
  private deadline(options: CallOptions): { controller: AbortController; timedOut: () => boolean; done: () => void } {
    const controller = new AbortController();
    const timeoutMs = options.timeoutMs ?? this.options.timeoutMs ?? 10_000;
    let expired = false;
    const timer =
      timeoutMs > 0
        ? setTimeout(() => {
            expired = true;
            controller.abort();
          }, timeoutMs)
        : undefined;
    const forward = (): void => controller.abort();
    options.signal?.addEventListener("abort", forward);
    return {
      controller,
      timedOut: () => expired,
      done: () => {
        if (timer !== undefined) clearTimeout(timer);
        options.signal?.removeEventListener("abort", forward);
      },
    };
  }

  private headers(options: CallOptions, accept: string): Record<string, string> {
    return {
      ...this.options.headers,
      ...options.headers,
      "content-type": "application/json",
      accept,
    };
  }

  /** Calls `endpoint` with `args`: the result's JSON, or throws. */
  async call(endpoint: string, args: object, options: CallOptions = {}): Promise<unknown> {
    const { controller, timedOut, done } = this.deadline(options);
    try {
      const response = await this.fetcher(this.url(endpoint), {
        method: "POST",
        headers: this.headers(options, "application/json"),
        body: JSON.stringify(args),
        signal: controller.signal,
      });
      const text = await response.text();
      if (!response.ok) throw errorOf(response.status, text);
      return JSON.parse(text) as unknown;
    } catch (err) {
      if (timedOut()) throw new DeadlineExceeded(`\`${endpoint}\` did not answer in time`);
      if (err instanceof VspError) throw err;
      throw new VspError("unavailable", `calling \`${endpoint}\`: ${String(err)}`, 0);
    } finally {
      done();
    }
  }

  /** Calls the streaming `endpoint`: its items as they come. Leaving the loop early (or the
   * deadline) aborts the request, and the gateway cancels the call. */
  async *stream(endpoint: string, args: object, options: CallOptions = {}): AsyncGenerator<unknown, void, undefined> {
    const { controller, timedOut, done } = this.deadline(options);
    try {
      let response: Response;
      try {
        response = await this.fetcher(this.url(endpoint), {
          method: "POST",
          headers: this.headers(options, "text/event-stream"),
          body: JSON.stringify(args),
          signal: controller.signal,
        });
      } catch (err) {
        if (timedOut()) throw new DeadlineExceeded(`\`${endpoint}\` did not answer in time`);
        throw new VspError("unavailable", `calling \`${endpoint}\`: ${String(err)}`, 0);
      }
      if (!response.ok || response.body === null) {
        throw errorOf(response.status, await response.text());
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (timedOut()) throw new DeadlineExceeded(`the stream of \`${endpoint}\` did not end in time`);
          throw new VspError("unavailable", `reading \`${endpoint}\`: ${String(err)}`, 0);
        }
        if (chunk.done) {
          throw new VspError("protocol", `the stream of \`${endpoint}\` stopped without its end`, response.status);
        }
        buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n/g, "\n");
        if (buffer.length > MAX_EVENT) {
          throw new VspError("protocol", `an event of \`${endpoint}\` is over ${MAX_EVENT} characters`, response.status);
        }
        let split: number;
        while ((split = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, split);
          buffer = buffer.slice(split + 2);
          let kind = "message";
          const data: string[] = [];
          for (const line of event.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          const text = data.join("\n");
          if (kind === "item") yield JSON.parse(text) as unknown;
          else if (kind === "end") return;
          else if (kind === "error") throw errorOf(response.status, text);
        }
      }
    } finally {
      controller.abort();
      done();
    }
  }
}
