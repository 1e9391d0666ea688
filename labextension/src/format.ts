/**
 * Formatting of job progress, durations, sizes and metric values for display.
 */

import type { IJobRecord } from './wire';

/**
 * Format a fraction in [0, 1] as a whole percentage, e.g. `0.235` -> `23%`.
 *
 * Values outside the range are clamped; a missing or non-finite fraction
 * gives an en dash.
 */
export function formatPercent(fraction: number | null | undefined): string {
  if (fraction === null || fraction === undefined || !isFinite(fraction)) {
    return '–';
  }
  const clamped = Math.min(1, Math.max(0, fraction));
  return `${Math.floor(clamped * 100)}%`;
}

/**
 * Format a duration in seconds compactly: `45s`, `3m 05s`, `2h 04m`, `3d 2h`.
 */
export function formatDuration(seconds: number | null | undefined): string {
  if (
    seconds === null ||
    seconds === undefined ||
    !isFinite(seconds) ||
    seconds < 0
  ) {
    return '–';
  }
  const total = Math.round(seconds);
  if (total < 60) {
    return `${total}s`;
  }
  const minutes = Math.floor(total / 60);
  if (minutes < 60) {
    return `${minutes}m ${pad2(total % 60)}s`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 24) {
    return `${hours}h ${pad2(minutes % 60)}m`;
  }
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

/**
 * Format an estimated time remaining, e.g. `ETA 3m 05s`; empty when unknown.
 */
export function formatEta(seconds: number | null | undefined): string {
  const text = formatDuration(seconds);
  return text === '–' ? '' : `ETA ${text}`;
}

/**
 * Format a byte count with binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
 */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !isFinite(bytes) || bytes < 0) {
    return '–';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) {
    return `${Math.round(value)} B`;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/**
 * Format a metric value with four significant digits; `null` shows as `NaN`
 * because the event stream writes non-finite values as null.
 */
export function formatMetric(value: number | null | undefined): string {
  if (value === null || value === undefined) {
    return 'NaN';
  }
  if (!isFinite(value)) {
    return String(value);
  }
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) {
    return value.toExponential(2);
  }
  return String(Number(value.toPrecision(4)));
}

/**
 * Format a UNIX timestamp (seconds) as a short local date and time.
 */
export function formatTimestamp(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '–';
  }
  const date = new Date(seconds * 1000);
  return date.toLocaleString(undefined, {
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit'
  });
}

/**
 * The completed fraction of a job in [0, 1], or `null` when unknown.
 *
 * Uses `progress.fraction` when the server sent it, else the step count; a
 * succeeded job counts as complete.
 */
export function jobFraction(job: IJobRecord): number | null {
  if (job.status === 'succeeded') {
    return 1;
  }
  const progress = job.progress;
  if (!progress) {
    return null;
  }
  if (typeof progress.fraction === 'number' && isFinite(progress.fraction)) {
    return Math.min(1, Math.max(0, progress.fraction));
  }
  if (
    typeof progress.step === 'number' &&
    typeof progress.total_steps === 'number' &&
    progress.total_steps > 0
  ) {
    return Math.min(1, Math.max(0, progress.step / progress.total_steps));
  }
  return null;
}

/**
 * Metric names preferred as a job's "main metric", best first.
 */
const MAIN_METRIC_PREFERENCE = [
  /^val[_/]?acc/i,
  /^val[_/]?loss/i,
  /^val/i,
  /^train[_/]?loss/i,
  /loss/i
];

/**
 * The metric to show in a job's row: the first validation accuracy, else
 * validation loss, else any validation metric, else the training loss, else
 * the alphabetically first metric. Returns `null` when the job has no metric.
 */
export function mainMetric(
  job: IJobRecord
): { key: string; value: number | null } | null {
  const metrics = job.last_metrics ?? {};
  const keys = Object.keys(metrics).sort();
  if (keys.length === 0) {
    return null;
  }
  for (const pattern of MAIN_METRIC_PREFERENCE) {
    const key = keys.find(name => pattern.test(name));
    if (key !== undefined) {
      return { key, value: metrics[key] };
    }
  }
  return { key: keys[0], value: metrics[keys[0]] };
}

/**
 * The Python line that re-attaches to a job from a notebook.
 */
export function reattachLine(jobId: string): string {
  return `tml.job("${jobId}")`;
}

function pad2(value: number): string {
  return value < 10 ? `0${value}` : String(value);
}
