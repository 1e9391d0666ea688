/**
 * The typed request helper: every call to the training-manager REST API goes
 * through JupyterLab's `ServerConnection`, so base URLs such as
 * `/user/<name>/` behind JupyterHub and the server's authentication work.
 */

import { ServerConnection } from '@jupyterlab/services';

import { apiUrl, QueryValue } from './url';
import type { IErrorBody } from './wire';

/**
 * Options of a single API request.
 */
export interface IRequestOptions {
  /**
   * The HTTP method; `GET` by default.
   */
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE';

  /**
   * Query parameters; `undefined` values are left out.
   */
  query?: Record<string, QueryValue>;

  /**
   * A body to send as JSON.
   */
  body?: unknown;

  /**
   * An ETag from an earlier answer; sent as `If-None-Match`.
   */
  etag?: string | null;

  /**
   * The server settings; JupyterLab's defaults when left out.
   */
  settings?: ServerConnection.ISettings;
}

/**
 * The answer of a conditional request.
 */
export interface IConditionalResult<T> {
  /**
   * The decoded body, or `null` when the server said "not modified".
   */
  data: T | null;

  /**
   * The ETag of the answer, if the server sent one.
   */
  etag: string | null;

  /**
   * Whether the server answered 304 Not Modified.
   */
  notModified: boolean;
}

/**
 * An error answer from the API, carrying the HTTP status and the server's
 * message.
 */
export class ApiError extends Error {
  /**
   * Construct an API error.
   *
   * @param status - the HTTP status, or 0 when the server could not be reached.
   * @param message - what went wrong, in words for the user.
   * @param detail - extra detail from the server, if any.
   */
  constructor(status: number, message: string, detail?: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.detail = detail ?? '';
  }

  /**
   * The HTTP status, or 0 when the server could not be reached.
   */
  readonly status: number;

  /**
   * Extra detail from the server, if any.
   */
  readonly detail: string;

  /**
   * Whether the error means that the server extension is not installed or
   * not enabled: the Jupyter server answers 404 for the whole namespace.
   */
  get extensionMissing(): boolean {
    return this.status === 404 && this.detail === EXTENSION_MISSING;
  }

  /**
   * Whether the server could not be reached at all (down or restarting).
   */
  get unreachable(): boolean {
    return this.status === 0;
  }
}

/**
 * The detail attached to a 404 that did not come from the server extension.
 */
export const EXTENSION_MISSING = 'extension-missing';

/**
 * Call an API endpoint and decode its JSON answer.
 *
 * @param path - the path under `training-manager/api/`, e.g. `jobs`.
 * @param options - method, query, body and settings.
 * @returns the decoded JSON body (`null` for an empty body).
 * @throws {ApiError} when the server answers with an error status or cannot
 *   be reached.
 */
export async function requestAPI<T>(
  path: string,
  options: IRequestOptions = {}
): Promise<T> {
  const result = await conditionalRequest<T>(path, { ...options, etag: null });
  return result.data as T;
}

/**
 * Call an API endpoint with `If-None-Match`, so that an unchanged resource
 * costs an empty 304 answer instead of its full body.
 *
 * @param path - the path under `training-manager/api/`.
 * @param options - as for `requestAPI`, with `etag` from the previous answer.
 * @throws {ApiError} as for `requestAPI`.
 */
export async function conditionalRequest<T>(
  path: string,
  options: IRequestOptions = {}
): Promise<IConditionalResult<T>> {
  const settings = options.settings ?? ServerConnection.makeSettings();
  const url = apiUrl(settings.baseUrl, path, options.query);
  const headers: Record<string, string> = {};
  if (options.etag) {
    headers['If-None-Match'] = options.etag;
  }
  const init: RequestInit = { method: options.method ?? 'GET', headers };
  if (options.body !== undefined) {
    init.body = JSON.stringify(options.body);
    headers['Content-Type'] = 'application/json';
  }

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(
      0,
      'The Jupyter server cannot be reached; it may be restarting.',
      String(error)
    );
  }

  const etag = response.headers.get('ETag');
  if (response.status === 304) {
    return {
      data: null,
      etag: etag ?? options.etag ?? null,
      notModified: true
    };
  }
  const text = await response.text();
  if (!response.ok) {
    throw errorFromResponse(response.status, text);
  }
  const data = text ? (JSON.parse(text) as T) : (null as T);
  return { data, etag, notModified: false };
}

/**
 * Build an `ApiError` from an error status and the body the server sent.
 *
 * The server extension answers `{"error", "detail"}`; any other 404 (an HTML
 * page or Jupyter's own JSON) means the extension is not there.
 */
export function errorFromResponse(status: number, text: string): ApiError {
  let body: IErrorBody | null = null;
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === 'object' && 'error' in parsed) {
      body = parsed as IErrorBody;
    }
  } catch {
    body = null;
  }
  if (body === null) {
    if (status === 404) {
      return new ApiError(
        404,
        'The training-manager server extension is not running on this Jupyter server.',
        EXTENSION_MISSING
      );
    }
    return new ApiError(status, `The server answered ${status}.`, text);
  }
  return new ApiError(
    status,
    body.error || `The server answered ${status}.`,
    body.detail
  );
}
