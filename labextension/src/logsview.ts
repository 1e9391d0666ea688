/**
 * A main-area tab that shows the output of one rank of a job and follows it
 * while the job runs.
 */

import { ServerConnection } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { ApiError, requestAPI } from './api';
import { apiPath } from './url';
import { IJobRecord, ILogChunk, isActive } from './wire';

/**
 * Options of a `LogsWidget`.
 */
export interface ILogsWidgetOptions {
  /**
   * The job id.
   */
  jobId: string;

  /**
   * The job name, for the tab title.
   */
  jobName?: string;

  /**
   * The rank shown first.
   */
  rank?: number;

  /**
   * The server settings; JupyterLab's defaults when left out.
   */
  settings?: ServerConnection.ISettings;

  /**
   * Milliseconds between two reads while the job runs.
   */
  interval?: number;
}

/**
 * The most characters kept on screen; older output is dropped from the top.
 */
const MAX_CHARS = 2_000_000;

/**
 * The rank logs of a job, read from a byte offset so that each poll only
 * carries the new output.
 */
export class LogsWidget extends Widget {
  /**
   * Construct the widget and start following rank `options.rank` (0).
   */
  constructor(options: ILogsWidgetOptions) {
    super();
    this._jobId = options.jobId;
    this._settings = options.settings ?? ServerConnection.makeSettings();
    this._interval = options.interval ?? 1000;
    this.id = `tml-logs-${options.jobId}`;
    this.title.label = `Logs ${options.jobName || options.jobId}`;
    this.title.caption = `Rank logs of job ${options.jobId}`;
    this.title.closable = true;
    this.addClass('tml-LogsWidget');

    const toolbar = document.createElement('div');
    toolbar.className = 'tml-LogsToolbar';
    const label = document.createElement('label');
    label.textContent = 'Rank ';
    this._rankSelect = document.createElement('select');
    this._rankSelect.setAttribute('aria-label', 'Rank whose output is shown');
    this._rankSelect.addEventListener('change', () => {
      this._switchRank(Number(this._rankSelect.value));
    });
    label.appendChild(this._rankSelect);
    this._status = document.createElement('span');
    this._status.className = 'tml-LogsStatus';
    this._status.setAttribute('role', 'status');
    toolbar.append(label, this._status);

    this._output = document.createElement('pre');
    this._output.className = 'tml-LogsOutput';
    this._output.tabIndex = 0;
    this._output.setAttribute('aria-label', `Output of job ${options.jobId}`);
    this._output.setAttribute('aria-live', 'off');
    this.node.append(toolbar, this._output);

    this._setRanks(1);
    this._switchRank(options.rank ?? 0);
  }

  /**
   * The job whose logs are shown.
   */
  get jobId(): string {
    return this._jobId;
  }

  /**
   * The rank whose logs are shown.
   */
  get rank(): number {
    return this._rank;
  }

  /**
   * The text shown so far.
   */
  get text(): string {
    return this._output.textContent ?? '';
  }

  /**
   * Stop following and release the poll.
   */
  override dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll?.dispose();
    super.dispose();
  }

  private _switchRank(rank: number): void {
    this._poll?.dispose();
    this._rank = rank;
    this._offset = 0;
    this._output.textContent = '';
    this._rankSelect.value = String(rank);
    this._status.textContent = 'following…';
    this._poll = new Poll({
      auto: true,
      factory: () => this._tick(),
      frequency: { interval: this._interval, backoff: true, max: 15000 },
      name: `training-manager-lab:logs:${this._jobId}:${rank}`,
      standby: 'when-hidden'
    });
  }

  private async _tick(): Promise<void> {
    const base = `jobs/${apiPath(this._jobId)}`;
    let chunk: ILogChunk;
    try {
      chunk = await requestAPI<ILogChunk>(`${base}/logs`, {
        query: { rank: this._rank, offset: this._offset },
        settings: this._settings
      });
    } catch (error) {
      this._status.textContent =
        error instanceof ApiError ? error.message : String(error);
      throw error;
    }
    if (chunk.text) {
      this._append(chunk.text);
    }
    if (typeof chunk.offset === 'number') {
      this._offset = chunk.offset;
    }
    if (chunk.text) {
      return;
    }

    // Only when nothing new came is it worth asking whether the job ended.
    const job = await requestAPI<IJobRecord>(base, {
      settings: this._settings
    });
    this._setRanks(Math.max(1, job.world_size ?? 1));
    if (isActive(job.status)) {
      this._status.textContent = `${job.status}, following…`;
      return;
    }
    this._status.textContent = `job ${job.status}; output complete`;
    this._poll?.dispose();
  }

  private _append(text: string): void {
    const output = this._output;
    const follow =
      output.scrollHeight - output.scrollTop - output.clientHeight < 24;
    let content = (output.textContent ?? '') + text;
    if (content.length > MAX_CHARS) {
      content = content.slice(content.length - MAX_CHARS);
    }
    output.textContent = content;
    if (follow) {
      output.scrollTop = output.scrollHeight;
    }
  }

  private _setRanks(count: number): void {
    if (count === this._rankSelect.options.length) {
      return;
    }
    this._rankSelect.textContent = '';
    for (let rank = 0; rank < count; rank++) {
      const option = document.createElement('option');
      option.value = String(rank);
      option.textContent = String(rank);
      this._rankSelect.appendChild(option);
    }
    this._rankSelect.value = String(this._rank);
  }

  private _jobId: string;
  private _settings: ServerConnection.ISettings;
  private _interval: number;
  private _rank = 0;
  private _offset = 0;
  private _poll: Poll | null = null;
  private _rankSelect: HTMLSelectElement;
  private _status: HTMLSpanElement;
  private _output: HTMLPreElement;
}
