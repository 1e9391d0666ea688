import { ServerConnection } from '@jupyterlab/services';

import {
  ApiError,
  conditionalRequest,
  errorFromResponse,
  requestAPI
} from '../api';

interface ISeen {
  url: string;
  method: string;
  headers: Headers;
  body: string;
}

/**
 * Server settings whose fetch records each request and answers from a script.
 */
function scriptedSettings(
  baseUrl: string,
  answer: (request: Request) => Response | Promise<Response>
): { settings: ServerConnection.ISettings; seen: ISeen[] } {
  const seen: ISeen[] = [];
  const settings = ServerConnection.makeSettings({
    baseUrl,
    wsUrl: baseUrl.replace(/^http/, 'ws'),
    token: 'secret-token',
    init: { cache: 'no-store', credentials: 'same-origin' },
    fetch: async (input: RequestInfo | URL) => {
      const request = input as Request;
      seen.push({
        url: request.url,
        method: request.method,
        headers: request.headers,
        body: request.body ? await request.clone().text() : ''
      });
      return answer(request);
    }
  });
  return { settings, seen };
}

function json(
  status: number,
  body: unknown,
  headers: Record<string, string> = {}
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers }
  });
}

describe('requestAPI', () => {
  it('sends requests under a non-root base URL with the token', async () => {
    const { settings, seen } = scriptedSettings(
      'http://127.0.0.1:9999/user/ann/',
      () => json(200, { jobs: [], total: 0 })
    );

    const data = await requestAPI<{ total: number }>('jobs', {
      query: { status: 'running', limit: 5 },
      settings
    });

    expect(data.total).toBe(0);
    expect(seen).toHaveLength(1);
    const url = new URL(seen[0].url);
    expect(url.pathname).toBe('/user/ann/training-manager/api/jobs');
    expect(url.searchParams.get('status')).toBe('running');
    expect(url.searchParams.get('limit')).toBe('5');
    expect(seen[0].headers.get('Authorization')).toBe('token secret-token');
  });

  it('sends a JSON body with PUT', async () => {
    const { settings, seen } = scriptedSettings('http://127.0.0.1:9999/', () =>
      json(200, { ok: true })
    );

    await requestAPI('models/digits/aliases/champion', {
      method: 'PUT',
      body: { version: '3' },
      settings
    });

    expect(seen[0].method).toBe('PUT');
    expect(JSON.parse(seen[0].body)).toEqual({ version: '3' });
    expect(seen[0].headers.get('Content-Type')).toBe('application/json');
  });

  it('turns the server error body into an ApiError with status and detail', async () => {
    const { settings } = scriptedSettings('http://127.0.0.1:9999/', () =>
      json(409, {
        error: 'Job 3f9a1c2b7d10 is running.',
        detail: 'Cancel it first.'
      })
    );

    const failure = requestAPI('jobs/3f9a1c2b7d10', {
      method: 'DELETE',
      settings
    });

    await expect(failure).rejects.toBeInstanceOf(ApiError);
    await expect(failure).rejects.toMatchObject({
      status: 409,
      message: 'Job 3f9a1c2b7d10 is running.',
      detail: 'Cancel it first.'
    });
  });

  it('reports an unreachable server as status 0', async () => {
    const { settings } = scriptedSettings('http://127.0.0.1:9999/', () => {
      throw new TypeError('Failed to fetch');
    });

    const error = await requestAPI('jobs', { settings }).catch(
      e => e as ApiError
    );

    expect(error).toBeInstanceOf(ApiError);
    expect(error.unreachable).toBe(true);
    expect(error.extensionMissing).toBe(false);
  });
});

describe('conditionalRequest', () => {
  it('sends If-None-Match and reports 304 as not modified', async () => {
    const { settings, seen } = scriptedSettings(
      'http://127.0.0.1:9999/',
      request =>
        request.headers.get('If-None-Match') === '"v1"'
          ? new Response(null, { status: 304, headers: { ETag: '"v1"' } })
          : json(200, { jobs: [], total: 0 }, { ETag: '"v1"' })
    );

    const first = await conditionalRequest('jobs', { settings });
    const second = await conditionalRequest('jobs', {
      settings,
      etag: first.etag
    });

    expect(first).toMatchObject({ notModified: false, etag: '"v1"' });
    expect(first.data).toEqual({ jobs: [], total: 0 });
    expect(seen[0].headers.get('If-None-Match')).toBeNull();
    expect(seen[1].headers.get('If-None-Match')).toBe('"v1"');
    expect(second).toEqual({ data: null, etag: '"v1"', notModified: true });
  });
});

describe('errorFromResponse', () => {
  it('reads a 404 without the extension error body as a missing extension', () => {
    const error = errorFromResponse(404, '<html>404: Not Found</html>');

    expect(error.extensionMissing).toBe(true);
    expect(error.message).toContain('server extension is not running');
  });

  it('keeps a 404 from the extension (unknown job) as an ordinary error', () => {
    const error = errorFromResponse(
      404,
      JSON.stringify({ error: 'No job abc.', detail: '' })
    );

    expect(error.extensionMissing).toBe(false);
    expect(error.message).toBe('No job abc.');
  });

  it('names the status of a non-JSON server error', () => {
    expect(errorFromResponse(502, 'Bad Gateway').message).toBe(
      'The server answered 502.'
    );
  });
});
