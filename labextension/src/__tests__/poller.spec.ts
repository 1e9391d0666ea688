import { ServerConnection } from '@jupyterlab/services';

import { PolledResource } from '../poller';

type Answer = () => Response | Promise<Response>;

/**
 * Settings whose fetch answers from a queue of scripted answers and records
 * the If-None-Match header of each request.
 */
function scripted(answers: Answer[]): {
  settings: ServerConnection.ISettings;
  sentEtags: (string | null)[];
} {
  const sentEtags: (string | null)[] = [];
  const settings = ServerConnection.makeSettings({
    baseUrl: 'http://127.0.0.1:9999/',
    wsUrl: 'ws://127.0.0.1:9999/',
    token: 't',
    fetch: async (input: RequestInfo | URL) => {
      sentEtags.push((input as Request).headers.get('If-None-Match'));
      const answer = answers.shift();
      if (!answer) {
        throw new Error('no scripted answer left');
      }
      return answer();
    }
  });
  return { settings, sentEtags };
}

function ok(body: unknown, etag: string): Answer {
  return () =>
    new Response(JSON.stringify(body), {
      status: 200,
      headers: { ETag: etag, 'Content-Type': 'application/json' }
    });
}

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) {
    await new Promise(resolve => setTimeout(resolve, 5));
  }
  if (!condition()) {
    throw new Error('condition not met');
  }
}

describe('PolledResource', () => {
  let resource: PolledResource<{ n: number }> | null = null;

  afterEach(() => {
    resource?.dispose();
    resource = null;
  });

  it('keeps the value on 304 and emits only for new content', async () => {
    const { settings, sentEtags } = scripted([
      ok({ n: 1 }, '"a"'),
      () => new Response(null, { status: 304, headers: { ETag: '"a"' } }),
      ok({ n: 2 }, '"b"')
    ]);
    const emitted: number[] = [];
    resource = new PolledResource({
      path: 'jobs',
      parse: data => data as { n: number },
      interval: 60_000,
      settings
    });
    resource.changed.connect((_, value) => emitted.push(value.n));

    await until(() => resource!.value !== null);
    await resource.refresh();
    await until(() => sentEtags.length === 2);
    await resource.refresh();
    await until(() => resource!.value?.n === 2);

    expect(sentEtags).toEqual([null, '"a"', '"a"']);
    expect(emitted).toEqual([1, 2]);
    expect(resource.state).toBe('connected');
  });

  it('says the extension is missing on a foreign 404 and reconnects when it answers', async () => {
    const { settings } = scripted([
      () => new Response('<html>404: Not Found</html>', { status: 404 }),
      () => {
        throw new TypeError('Failed to fetch');
      },
      ok({ n: 3 }, '"c"')
    ]);
    const states: string[] = [];
    resource = new PolledResource({
      path: 'jobs',
      parse: data => data as { n: number },
      interval: 60_000,
      settings
    });
    resource.stateChanged.connect((_, state) => states.push(state));

    await until(() => states.length === 1);
    await resource.refresh().catch(() => undefined);
    await until(() => states.length === 2);
    await resource.refresh().catch(() => undefined);
    await until(() => resource!.value !== null);

    expect(states).toEqual(['extension-missing', 'unreachable', 'connected']);
    expect(resource.value).toEqual({ n: 3 });
    expect(resource.error).toBeNull();
  });
});
