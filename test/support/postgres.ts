// A TCP proxy between a service and the test Postgres, to stop and start as an outage would:
// the same idea as redisProxy (test/support/redis.ts), but one object that can come back on
// the same port, so the service's connection string never changes.
import { connect, createServer, type Server, type Socket } from "node:net";

export type PostgresProxy = {
  /** `databaseUrl` with its host and port replaced by the proxy's. */
  url: string;
  port: number;
  /** Drops every connection and refuses new ones (connection refused), as a lost server does. */
  stop(): Promise<void>;
  /** Accepts connections again, on the same port. */
  start(): Promise<void>;
  /** Stops, if running, for good. */
  close(): Promise<void>;
};

/** A proxy on 127.0.0.1 to the Postgres server of `databaseUrl` (loopback only). */
export async function postgresProxy(databaseUrl: string): Promise<PostgresProxy> {
  const target = new URL(databaseUrl);
  const targetPort = Number(target.port || 5432);
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;

  const listen = async () => {
    const s = createServer((client) => {
      const upstream = connect(targetPort, target.hostname);
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on("error", () => {});
        socket.on("close", () => {
          sockets.delete(socket);
          // One side gone: the other goes too, as through a real network path.
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      s.once("error", reject);
      s.listen(port, "127.0.0.1", () => resolve());
    });
    port = (s.address() as { port: number }).port;
    server = s;
  };

  const stop = async () => {
    const s = server;
    server = undefined;
    if (!s) return;
    const closed = new Promise<void>((resolve) => s.close(() => resolve()));
    for (const socket of sockets) socket.destroy();
    await closed;
  };

  await listen();
  const url = new URL(databaseUrl);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return {
    url: url.toString(),
    port,
    stop,
    async start() {
      if (server) return;
      await listen();
    },
    close: stop,
  };
}
