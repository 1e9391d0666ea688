import {
  formatBytes,
  formatDuration,
  formatEta,
  formatMetric,
  formatPercent,
  jobFraction,
  mainMetric,
  reattachLine
} from '../format';
import type { IJobRecord } from '../wire';

function job(fields: Partial<IJobRecord>): IJobRecord {
  return { id: '3f9a1c2b7d10', status: 'running', ...fields };
}

describe('formatPercent', () => {
  it('shows whole percents rounded down so 100% means done', () => {
    expect(formatPercent(0.235)).toBe('23%');
    expect(formatPercent(0.999)).toBe('99%');
    expect(formatPercent(1)).toBe('100%');
    expect(formatPercent(0)).toBe('0%');
  });

  it('clamps out-of-range values and marks unknown ones', () => {
    expect(formatPercent(1.7)).toBe('100%');
    expect(formatPercent(-0.2)).toBe('0%');
    expect(formatPercent(null)).toBe('–');
    expect(formatPercent(undefined)).toBe('–');
    expect(formatPercent(NaN)).toBe('–');
  });
});

describe('formatDuration and formatEta', () => {
  it('uses the two largest units', () => {
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(45.4)).toBe('45s');
    expect(formatDuration(185)).toBe('3m 05s');
    expect(formatDuration(7440)).toBe('2h 04m');
    expect(formatDuration(3 * 86400 + 2 * 3600 + 59)).toBe('3d 2h');
  });

  it('marks negative, missing and infinite durations as unknown', () => {
    expect(formatDuration(-1)).toBe('–');
    expect(formatDuration(null)).toBe('–');
    expect(formatDuration(Infinity)).toBe('–');
  });

  it('prefixes an ETA and leaves an unknown one empty', () => {
    expect(formatEta(12.3)).toBe('ETA 12s');
    expect(formatEta(3600)).toBe('ETA 1h 00m');
    expect(formatEta(null)).toBe('');
  });
});

describe('formatBytes', () => {
  it('uses binary units with one decimal below ten', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(24 * 1024 ** 3)).toBe('24 GiB');
    expect(formatBytes(3.25 * 1024 ** 4)).toBe('3.3 TiB');
  });

  it('marks unknown sizes', () => {
    expect(formatBytes(null)).toBe('–');
    expect(formatBytes(-5)).toBe('–');
  });
});

describe('formatMetric', () => {
  it('keeps four significant digits and switches to exponents at the extremes', () => {
    expect(formatMetric(0.312345)).toBe('0.3123');
    expect(formatMetric(12.5)).toBe('12.5');
    expect(formatMetric(0)).toBe('0');
    expect(formatMetric(0.00012)).toBe('1.20e-4');
    expect(formatMetric(123456)).toBe('1.23e+5');
  });

  it('shows a null value (a non-finite one on the wire) as NaN', () => {
    expect(formatMetric(null)).toBe('NaN');
  });
});

describe('jobFraction', () => {
  it('prefers the fraction the server computed', () => {
    expect(
      jobFraction(
        job({ progress: { fraction: 0.4, step: 1, total_steps: 100 } })
      )
    ).toBe(0.4);
  });

  it('falls back to steps over total steps', () => {
    expect(jobFraction(job({ progress: { step: 40, total_steps: 160 } }))).toBe(
      0.25
    );
  });

  it('counts a succeeded job as complete and knows nothing without progress', () => {
    expect(jobFraction(job({ status: 'succeeded', progress: null }))).toBe(1);
    expect(jobFraction(job({ progress: null }))).toBeNull();
    expect(
      jobFraction(job({ progress: { step: 3, total_steps: 0 } }))
    ).toBeNull();
  });
});

describe('mainMetric', () => {
  it('prefers validation accuracy over losses', () => {
    const record = job({
      last_metrics: { train_loss: 0.3, val_acc: 0.93, val_loss: 0.2 }
    });
    expect(mainMetric(record)).toEqual({ key: 'val_acc', value: 0.93 });
  });

  it('falls back to the training loss, then to the first name', () => {
    expect(
      mainMetric(job({ last_metrics: { lr: 0.1, train_loss: 0.5 } }))
    ).toEqual({
      key: 'train_loss',
      value: 0.5
    });
    expect(mainMetric(job({ last_metrics: { zeta: 1, alpha: 2 } }))).toEqual({
      key: 'alpha',
      value: 2
    });
    expect(mainMetric(job({ last_metrics: {} }))).toBeNull();
  });

  it('accepts metric names with a slash', () => {
    expect(mainMetric(job({ last_metrics: { 'val/acc': null } }))).toEqual({
      key: 'val/acc',
      value: null
    });
  });
});

describe('reattachLine', () => {
  it('is the Python call that re-attaches to the job', () => {
    expect(reattachLine('3f9a1c2b7d10')).toBe('tml.job("3f9a1c2b7d10")');
  });
});
