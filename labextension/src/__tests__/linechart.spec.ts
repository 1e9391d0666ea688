import {
  addMetricEvents,
  extentOf,
  IPoint,
  linePath,
  thin
} from '../linechart';

describe('addMetricEvents', () => {
  it('groups metric events by key and ignores other events', () => {
    const series = new Map<string, IPoint[]>();

    addMetricEvents(series, [
      { type: 'metric', step: 1, key: 'train_loss', value: 0.9 },
      { type: 'progress', step: 1 },
      { type: 'metric', step: 2, key: 'train_loss', value: 0.7 },
      { type: 'metric', step: 2, key: 'val_acc', value: 0.5 }
    ]);

    expect(series.get('train_loss')).toEqual([
      { step: 1, value: 0.9 },
      { step: 2, value: 0.7 }
    ]);
    expect(series.get('val_acc')).toEqual([{ step: 2, value: 0.5 }]);
    expect(series.size).toBe(2);
  });

  it('keeps the last value of a repeated step and stores non-finite values as null', () => {
    const series = new Map<string, IPoint[]>();

    addMetricEvents(series, [
      { type: 'metric', step: 3, key: 'loss', value: 1 },
      { type: 'metric', step: 3, key: 'loss', value: 2 },
      { type: 'metric', step: 4, key: 'loss', value: null, nonfinite: 'nan' }
    ]);

    expect(series.get('loss')).toEqual([
      { step: 3, value: 2 },
      { step: 4, value: null }
    ]);
  });
});

describe('extentOf and linePath', () => {
  const box = { width: 100, height: 50, padding: 0 };

  it('spans the finite points only', () => {
    const extent = extentOf([
      [
        { step: 0, value: 4 },
        { step: 5, value: null },
        { step: 10, value: 2 }
      ]
    ]);

    expect(extent).toEqual({
      minStep: 0,
      maxStep: 10,
      minValue: 2,
      maxValue: 4
    });
    expect(extentOf([[{ step: 1, value: null }]])).toBeNull();
  });

  it('maps the first step left, the largest value to the top, breaks at gaps and dots lone points', () => {
    const points = [
      { step: 0, value: 4 },
      { step: 5, value: null },
      { step: 10, value: 2 }
    ];
    const extent = extentOf([points])!;

    expect(linePath(points, extent, box)).toBe('M0,0 l0,0 M100,50 l0,0');
  });

  it('draws a flat series and a single point across the middle', () => {
    const flat = [
      { step: 1, value: 3 },
      { step: 2, value: 3 }
    ];
    const single = [{ step: 7, value: 0.5 }];

    expect(linePath(flat, extentOf([flat])!, box)).toBe('M0,25 L100,25');
    expect(linePath(single, extentOf([single])!, box)).toBe('M50,25 l0,0');
  });
});

describe('thin', () => {
  it('keeps at most about max points and always the last one', () => {
    const points = Array.from({ length: 1001 }, (_, step) => ({
      step,
      value: step
    }));

    const kept = thin(points, 100);

    expect(kept.length).toBeLessThanOrEqual(102);
    expect(kept[0]).toEqual({ step: 0, value: 0 });
    expect(kept[kept.length - 1]).toEqual({ step: 1000, value: 1000 });
  });

  it('returns short series unchanged', () => {
    const points = [{ step: 0, value: 1 }];
    expect(thin(points, 10)).toBe(points);
  });
});
