/**
 * A resource of the REST API kept fresh by a Lumino `Poll` with conditional
 * requests: an unchanged resource costs an empty 304 answer.
 */

import { ServerConnection } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, conditionalRequest } from './api';
import type { QueryValue } from './url';

/**
 * The connection state of a polled resource.
 */
export type ConnectionState =
  'connecting' | 'connected' | 'extension-missing' | 'unreachable' | 'error';

/**
 * Options of a `PolledResource`.
 */
export interface IPolledResourceOptions<T> {
  /**
   * The path under `training-manager/api/`.
   */
  path: string;

  /**
   * Query parameters, read at every tick so that a filter can change them.
   */
  query?: () => Record<string, QueryValue>;

  /**
   * Turns the decoded JSON into the model; throws on a malformed answer.
   */
  parse: (data: unknown) => T;

  /**
   * Completes a fresh value with more requests (e.g. each model's versions)
   * before it is published.
   */
  expand?: (value: T, settings: ServerConnection.ISettings) => Promise<T>;

  /**
   * Milliseconds between two requests while all is well.
   */
  interval: number;

  /**
   * The longest wait between two requests while the server fails.
   */
  maxInterval?: number;

  /**
   * The server settings; JupyterLab's defaults when left out.
   */
  settings?: ServerConnection.ISettings;
}

/**
 * A REST resource polled with `If-None-Match`, which backs off while the
 * server is down and reconnects by itself when it comes back.
 */
export class PolledResource<T> {
  /**
   * Construct a polled resource and start polling.
   */
  constructor(options: IPolledResourceOptions<T>) {
    this._path = options.path;
    this._query = options.query ?? (() => ({}));
    this._parse = options.parse;
    this._expand = options.expand ?? null;
    this._settings = options.settings ?? ServerConnection.makeSettings();
    this._poll = new Poll({
      auto: true,
      factory: () => this._tick(),
      frequency: {
        interval: options.interval,
        backoff: true,
        max: options.maxInterval ?? 30 * 1000
      },
      name: `training-manager-lab:${options.path}`,
      standby: 'when-hidden'
    });
  }

  /**
   * The latest value, or `null` before the first answer.
   */
  get value(): T | null {
    return this._value;
  }

  /**
   * The connection state.
   */
  get state(): ConnectionState {
    return this._state;
  }

  /**
   * The latest error, or `null` while connected.
   */
  get error(): ApiError | null {
    return this._error;
  }

  /**
   * Emitted when the value changes.
   */
  get changed(): ISignal<this, T> {
    return this._changed;
  }

  /**
   * Emitted when the connection state changes.
   */
  get stateChanged(): ISignal<this, ConnectionState> {
    return this._stateChanged;
  }

  /**
   * Whether the resource has been disposed.
   */
  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  /**
   * Ask again now, dropping the ETag when the query changed.
   */
  async refresh(options: { force?: boolean } = {}): Promise<void> {
    if (options.force) {
      this._etag = null;
    }
    await this._poll.refresh();
    await this._poll.tick;
  }

  /**
   * Stop polling and release the signals.
   */
  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _tick(): Promise<void> {
    const query = this._query();
    const queryKey = JSON.stringify(query);
    if (queryKey !== this._queryKey) {
      this._etag = null;
      this._queryKey = queryKey;
    }
    try {
      const result = await conditionalRequest<unknown>(this._path, {
        query,
        etag: this._etag,
        settings: this._settings
      });
      this._setState('connected', null);
      if (!result.notModified) {
        let value = this._parse(result.data);
        if (this._expand) {
          value = await this._expand(value, this._settings);
        }
        this._value = value;
        this._etag = result.etag;
        this._changed.emit(this._value);
      }
    } catch (error) {
      const apiError =
        error instanceof ApiError
          ? error
          : new ApiError(
              -1,
              'The server sent an answer the panel cannot read.',
              String(error)
            );
      this._etag = null;
      if (apiError.extensionMissing) {
        this._setState('extension-missing', apiError);
      } else if (apiError.unreachable) {
        this._setState('unreachable', apiError);
      } else {
        this._setState('error', apiError);
      }
      // A rejected tick makes the poll back off until the server answers.
      throw apiError;
    }
  }

  private _setState(state: ConnectionState, error: ApiError | null): void {
    this._error = error;
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _path: string;
  private _query: () => Record<string, QueryValue>;
  private _queryKey = '';
  private _parse: (data: unknown) => T;
  private _expand:
    ((value: T, settings: ServerConnection.ISettings) => Promise<T>) | null;
  private _settings: ServerConnection.ISettings;
  private _poll: Poll;
  private _etag: string | null = null;
  private _value: T | null = null;
  private _state: ConnectionState = 'connecting';
  private _error: ApiError | null = null;
  private _changed = new Signal<this, T>(this);
  private _stateChanged = new Signal<this, ConnectionState>(this);
}
