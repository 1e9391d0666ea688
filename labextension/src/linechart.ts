/**
 * Pure geometry of the live chart: metric events to series, and series to
 * SVG path data, kept apart from the DOM so that it can be unit tested.
 */

import type { IJobEvent } from './wire';

/**
 * One point of a series: a step and a value (`null` for a non-finite value).
 */
export interface IPoint {
  step: number;
  value: number | null;
}

/**
 * The drawing area of a chart, in SVG units.
 */
export interface IChartBox {
  width: number;
  height: number;
  padding: number;
}

/**
 * The ranges a set of series spans.
 */
export interface IExtent {
  minStep: number;
  maxStep: number;
  minValue: number;
  maxValue: number;
}

/**
 * Add the metric events of a batch to series keyed by metric name.
 *
 * A metric logged twice for one step keeps the last value.
 */
export function addMetricEvents(
  series: Map<string, IPoint[]>,
  events: IJobEvent[]
): void {
  for (const event of events) {
    if (event.type !== 'metric' || typeof event.key !== 'string') {
      continue;
    }
    const step = typeof event.step === 'number' ? event.step : 0;
    const value =
      typeof event.value === 'number' && isFinite(event.value)
        ? event.value
        : null;
    let points = series.get(event.key);
    if (!points) {
      points = [];
      series.set(event.key, points);
    }
    const last = points[points.length - 1];
    if (last && last.step === step) {
      last.value = value;
    } else {
      points.push({ step, value });
    }
  }
}

/**
 * The step and value ranges of some series, or `null` when there is no
 * finite point.
 */
export function extentOf(seriesList: IPoint[][]): IExtent | null {
  let extent: IExtent | null = null;
  for (const points of seriesList) {
    for (const point of points) {
      if (point.value === null) {
        continue;
      }
      if (extent === null) {
        extent = {
          minStep: point.step,
          maxStep: point.step,
          minValue: point.value,
          maxValue: point.value
        };
        continue;
      }
      extent.minStep = Math.min(extent.minStep, point.step);
      extent.maxStep = Math.max(extent.maxStep, point.step);
      extent.minValue = Math.min(extent.minValue, point.value);
      extent.maxValue = Math.max(extent.maxValue, point.value);
    }
  }
  return extent;
}

/**
 * The SVG path data of a series scaled into a box; a non-finite value breaks
 * the line instead of dropping to zero, and a lone point becomes a dot.
 */
export function linePath(
  points: IPoint[],
  extent: IExtent,
  box: IChartBox
): string {
  const stepSpan = extent.maxStep - extent.minStep;
  const valueSpan = extent.maxValue - extent.minValue;
  const innerWidth = box.width - 2 * box.padding;
  const innerHeight = box.height - 2 * box.padding;
  // A range of one step or one value is drawn across the middle.
  const xOf = (step: number): number =>
    stepSpan
      ? ((step - extent.minStep) / stepSpan) * innerWidth
      : innerWidth / 2;
  const yOf = (value: number): number =>
    valueSpan
      ? innerHeight - ((value - extent.minValue) / valueSpan) * innerHeight
      : innerHeight / 2;
  const parts: string[] = [];
  let penDown = false;
  for (const point of points) {
    if (point.value === null) {
      penDown = false;
      continue;
    }
    const x = box.padding + xOf(point.step);
    const y = box.padding + yOf(point.value);
    parts.push(`${penDown ? 'L' : 'M'}${round2(x)},${round2(y)}`);
    penDown = true;
  }
  // A point without a neighbour gets a zero-length segment, which a round
  // line cap draws as a dot.
  return parts
    .map((part, index) =>
      part.startsWith('M') && !(parts[index + 1] ?? '').startsWith('L')
        ? `${part} l0,0`
        : part
    )
    .join(' ');
}

/**
 * Keep at most `max` points by taking every n-th one (and always the last),
 * so that a long run does not slow the page down.
 */
export function thin(points: IPoint[], max: number): IPoint[] {
  if (points.length <= max) {
    return points;
  }
  const stride = Math.ceil(points.length / max);
  const kept = points.filter((_, index) => index % stride === 0);
  if (kept[kept.length - 1] !== points[points.length - 1]) {
    kept.push(points[points.length - 1]);
  }
  return kept;
}

function round2(value: number): number {
  return Math.round(value * 100) / 100;
}
