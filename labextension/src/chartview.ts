/**
 * A main-area tab with a live line chart per metric of a job, fed by the
 * job's event stream read from a cursor.
 */

import { ServerConnection } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { ApiError, requestAPI } from './api';
import { formatMetric } from './format';
import {
  addMetricEvents,
  extentOf,
  IChartBox,
  IPoint,
  linePath,
  thin
} from './linechart';
import { apiPath } from './url';
import { IEventBatch, isActive } from './wire';

/**
 * Options of a `ChartWidget`.
 */
export interface IChartWidgetOptions {
  /**
   * The job id.
   */
  jobId: string;

  /**
   * The job name, for the tab title.
   */
  jobName?: string;

  /**
   * The server settings; JupyterLab's defaults when left out.
   */
  settings?: ServerConnection.ISettings;

  /**
   * Seconds the server may hold an events request until something new comes.
   */
  wait?: number;
}

/**
 * The size of one small chart, in SVG units.
 */
const BOX: IChartBox = { width: 320, height: 160, padding: 8 };

/**
 * The most points drawn per series.
 */
const MAX_POINTS = 1000;

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * Live charts of every metric of a job, one small chart per metric.
 */
export class ChartWidget extends Widget {
  /**
   * Construct the widget and start reading events.
   */
  constructor(options: IChartWidgetOptions) {
    super();
    this._jobId = options.jobId;
    this._settings = options.settings ?? ServerConnection.makeSettings();
    this._wait = options.wait ?? 5;
    this.id = `tml-chart-${options.jobId}`;
    this.title.label = `Chart ${options.jobName || options.jobId}`;
    this.title.caption = `Live metrics of job ${options.jobId}`;
    this.title.closable = true;
    this.addClass('tml-ChartWidget');

    this._status = document.createElement('div');
    this._status.className = 'tml-ChartStatus';
    this._status.setAttribute('role', 'status');
    this._status.textContent = 'Waiting for metrics…';
    this._grid = document.createElement('div');
    this._grid.className = 'tml-ChartGrid';
    this.node.append(this._status, this._grid);

    this._poll = new Poll({
      auto: true,
      factory: () => this._tick(),
      frequency: { interval: 250, backoff: true, max: 15000 },
      name: `training-manager-lab:chart:${options.jobId}`,
      standby: 'when-hidden'
    });
  }

  /**
   * The metric names charted so far.
   */
  get metrics(): string[] {
    return Array.from(this._series.keys()).sort();
  }

  /**
   * Stop reading events.
   */
  override dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    super.dispose();
  }

  private async _tick(): Promise<void> {
    let batch: IEventBatch;
    try {
      batch = await requestAPI<IEventBatch>(
        `jobs/${apiPath(this._jobId)}/events`,
        {
          query: { cursor: this._cursor, wait: this._wait },
          settings: this._settings
        }
      );
    } catch (error) {
      this._status.textContent =
        error instanceof ApiError ? error.message : String(error);
      throw error;
    }
    this._cursor = batch.cursor;
    const events = batch.events ?? [];
    addMetricEvents(this._series, events);
    const ended = events.find(
      event =>
        event.type === 'status' && event.status && !isActive(event.status)
    );
    if (events.length > 0) {
      this._render();
    }
    if (ended) {
      this._status.textContent = `Job ${ended.status}.`;
      this._poll.dispose();
    } else if (this._series.size > 0) {
      this._status.textContent = 'Live';
    }
  }

  private _render(): void {
    for (const key of this.metrics) {
      const points = thin(this._series.get(key) as IPoint[], MAX_POINTS);
      let chart = this._charts.get(key);
      if (!chart) {
        chart = new SmallChart(key);
        this._charts.set(key, chart);
        this._grid.appendChild(chart.node);
      }
      chart.update(points);
    }
  }

  private _jobId: string;
  private _settings: ServerConnection.ISettings;
  private _wait: number;
  private _cursor = 0;
  private _poll: Poll;
  private _series = new Map<string, IPoint[]>();
  private _charts = new Map<string, SmallChart>();
  private _status: HTMLDivElement;
  private _grid: HTMLDivElement;
}

/**
 * One metric's chart: a title with the latest value and an SVG line.
 */
class SmallChart {
  constructor(key: string) {
    this.node = document.createElement('figure');
    this.node.className = 'tml-Chart';
    this.node.dataset.metric = key;
    this._caption = document.createElement('figcaption');
    this._svg = document.createElementNS(SVG_NS, 'svg');
    this._svg.setAttribute('viewBox', `0 0 ${BOX.width} ${BOX.height}`);
    this._svg.setAttribute('role', 'img');
    this._path = document.createElementNS(SVG_NS, 'path');
    this._path.setAttribute('class', 'tml-ChartLine');
    this._range = document.createElement('div');
    this._range.className = 'tml-ChartRange';
    this._svg.appendChild(this._path);
    this.node.append(this._caption, this._svg, this._range);
    this._key = key;
  }

  readonly node: HTMLElement;

  update(points: IPoint[]): void {
    const extent = extentOf([points]);
    const last = points[points.length - 1];
    this._caption.textContent = `${this._key}: ${last ? formatMetric(last.value) : '–'}`;
    if (!extent) {
      this._path.setAttribute('d', '');
      return;
    }
    this._path.setAttribute('d', linePath(points, extent, BOX));
    this._svg.setAttribute(
      'aria-label',
      `${this._key} from step ${extent.minStep} to ${extent.maxStep}, between ${formatMetric(extent.minValue)} and ${formatMetric(extent.maxValue)}`
    );
    this._range.textContent = `steps ${extent.minStep}–${extent.maxStep} · min ${formatMetric(extent.minValue)} · max ${formatMetric(extent.maxValue)}`;
  }

  private _key: string;
  private _caption: HTMLElement;
  private _svg: SVGSVGElement;
  private _path: SVGPathElement;
  private _range: HTMLDivElement;
}
