/**
 * Pure URL helpers for the training-manager REST API.
 *
 * Kept free of JupyterLab imports so that they can be unit tested in
 * isolation and reused by the request helper.
 */

/**
 * The URL namespace of the server extension, relative to the server's base URL.
 */
export const API_NAMESPACE = 'training-manager/api';

/**
 * Values accepted in a query string; `undefined` and `null` are left out.
 */
export type QueryValue = string | number | boolean | null | undefined;

/**
 * Join URL parts with exactly one slash between them.
 *
 * The first part keeps its scheme and leading slash; empty parts are skipped.
 */
export function joinUrl(...parts: string[]): string {
  const kept = parts.filter(part => part !== '');
  return kept
    .map((part, index) => {
      let trimmed = part;
      if (index > 0) {
        trimmed = trimmed.replace(/^\/+/, '');
      }
      if (index < kept.length - 1) {
        trimmed = trimmed.replace(/\/+$/, '');
      }
      return trimmed;
    })
    .join('/');
}

/**
 * Encode each segment of an API path, so a model name like `a b/c` cannot
 * escape its path segment.
 */
export function apiPath(...segments: string[]): string {
  return segments.map(segment => encodeURIComponent(segment)).join('/');
}

/**
 * Build a query string (with the leading `?`), or an empty string when no
 * value is set.
 */
export function queryString(query: Record<string, QueryValue> = {}): string {
  const pairs = Object.keys(query)
    .filter(key => query[key] !== undefined && query[key] !== null)
    .map(
      key =>
        `${encodeURIComponent(key)}=${encodeURIComponent(String(query[key]))}`
    );
  return pairs.length ? `?${pairs.join('&')}` : '';
}

/**
 * The full URL of an API endpoint under a server base URL.
 *
 * @param baseUrl - the Jupyter server base URL, e.g. `http://host/user/ann/`.
 * @param path - the path under the API namespace, e.g. `jobs/3f9a1c2b7d10`.
 * @param query - optional query parameters.
 */
export function apiUrl(
  baseUrl: string,
  path: string,
  query?: Record<string, QueryValue>
): string {
  return joinUrl(baseUrl, API_NAMESPACE, path) + queryString(query);
}
