import {
  describeHolder,
  mergeVersions,
  parseJobList,
  parseModelList,
  parseResources
} from '../normalize';

describe('parseJobList', () => {
  it('keeps records with an id and a status and reads the total', () => {
    const list = parseJobList({
      jobs: [{ id: 'aaaaaaaaaaaa', status: 'queued' }, { id: 'bad' }, 'junk'],
      total: 7
    });

    expect(list.jobs.map(job => job.id)).toEqual(['aaaaaaaaaaaa']);
    expect(list.total).toBe(7);
  });

  it('rejects an answer without a job list', () => {
    expect(() => parseJobList({ items: [] })).toThrow('no "jobs" list');
  });
});

describe('parseResources', () => {
  it('reads flat node fields and GPU rows', () => {
    const resources = parseResources({
      nodes: [
        {
          name: 'localhost',
          cpu_count: 2,
          cpu_percent: 37.5,
          memory_total: 100,
          memory_used: 40,
          gpus: [
            {
              index: 0,
              name: 'H200',
              utilization: 80,
              memory_total: 10,
              memory_used: 5,
              holder: { kind: 'job', id: '3f9a1c2b7d10' }
            }
          ]
        }
      ],
      holders: [],
      queue: [{ job_id: 'bbbbbbbbbbbb', position: 0 }]
    });

    const node = resources.nodes[0];
    expect(node.name).toBe('localhost');
    expect(node.cpu_percent).toBe(37.5);
    expect(node.memory_used).toBe(40);
    expect(node.gpus![0].utilization).toBe(80);
    expect(describeHolder(node.gpus![0].holder)).toBe('job 3f9a1c2b7d10');
    expect(resources.queue).toHaveLength(1);
  });

  it('reads nested cpu and memory objects and a node mapping', () => {
    const resources = parseResources({
      nodes: {
        'gpu-01': {
          cpu: { count: 64, percent: 12 },
          memory: { total: 1000, available: 250 }
        }
      }
    });

    expect(resources.nodes).toHaveLength(1);
    expect(resources.nodes[0]).toMatchObject({
      name: 'gpu-01',
      cpu_count: 64,
      cpu_percent: 12,
      memory_total: 1000,
      memory_used: 750,
      gpus: []
    });
    expect(resources.queue).toEqual([]);
  });

  it('attaches holders keyed by UUID, node and index, or counts other processes', () => {
    const resources = parseResources({
      nodes: [
        {
          node: 'box',
          cpu: { count: 2, percent: 50 },
          memory: { total: 8, used: 2, available: 6 },
          gpus: [
            { index: 0, uuid: 'GPU-a', processes: [] },
            { index: 1, uuid: 'GPU-b', processes: [] },
            { index: 2, uuid: 'GPU-c', processes: [{ pid: 9 }, { pid: 10 }] },
            { index: 3, uuid: 'GPU-d', processes: [] }
          ]
        }
      ],
      holders: {
        'GPU-a': { job_id: '3f9a1c2b7d10', name: 'digits' },
        'box:1': [{ kernel_id: 'abcdef0123456789' }, { pid: 7 }]
      }
    });

    const gpus = resources.nodes[0].gpus!;
    expect(resources.nodes[0].name).toBe('box');
    expect(gpus.map(gpu => describeHolder(gpu.holder))).toEqual([
      'job digits (3f9a1c2b7d10)',
      'kernel abcdef01, process 7',
      '2 other processes',
      ''
    ]);
  });

  it('rejects an answer without nodes', () => {
    expect(() => parseResources({})).toThrow('no "nodes"');
  });
});

describe('describeHolder', () => {
  it('names jobs, kernels and processes', () => {
    expect(describeHolder({ job_id: '3f9a1c2b7d10', name: 'digits' })).toBe(
      'job digits (3f9a1c2b7d10)'
    );
    expect(describeHolder({ kind: 'kernel', id: '0123456789abcdef' })).toBe(
      'kernel 01234567'
    );
    expect(describeHolder({ pid: 42 })).toBe('process 42');
    expect(describeHolder('someone')).toBe('someone');
    expect(describeHolder(null)).toBe('');
  });
});

describe('parseModelList', () => {
  it('reconciles the alias map with per-version alias lists, newest version first', () => {
    const list = parseModelList({
      models: [
        {
          name: 'digits',
          aliases: { champion: '1' },
          versions: [
            { version: '1', aliases: [], tags: { stage: 'prod' } },
            {
              version: '2',
              aliases: ['challenger'],
              tags: [{ key: 'k', value: 'v' }]
            },
            { version: 10, tags: {} }
          ]
        }
      ]
    });

    const model = list.models[0];
    expect(model.versions.map(v => v.version)).toEqual(['10', '2', '1']);
    expect(model.aliases).toEqual({ champion: '1', challenger: '2' });
    expect(model.versions[2].aliases).toEqual(['champion']);
    expect(model.versions[2].tags).toEqual({ stage: 'prod' });
    expect(model.versions[1].tags).toEqual({ k: 'v' });
  });

  it('accepts MLflow-style alias lists and a single model', () => {
    const list = parseModelList({
      name: 'm',
      aliases: [{ alias: 'best', version: 3 }],
      latest_versions: [{ version: '3' }]
    });

    expect(list.models[0].aliases).toEqual({ best: '3' });
    expect(list.models[0].versions[0].aliases).toEqual(['best']);
  });

  it('gives an empty list for an empty registry', () => {
    expect(parseModelList({ models: [] })).toEqual({ models: [] });
  });
});

describe('mergeVersions', () => {
  it('combines the model list entry with the versions of GET models/<name>', () => {
    const [listed] = parseModelList({
      models: [
        { name: 'digits', aliases: { champion: '1' }, latest_version: '2' }
      ]
    }).models;

    const merged = mergeVersions(listed, {
      name: 'digits',
      versions: [
        {
          version: '1',
          aliases: ['champion'],
          tags: {},
          created_at: 1733300000.5
        },
        {
          version: '2',
          aliases: [],
          tags: { stage: 'staging' },
          job_id: '3f9a1c2b7d10'
        }
      ]
    });

    expect(merged.versions.map(v => [v.version, v.aliases])).toEqual([
      ['2', []],
      ['1', ['champion']]
    ]);
    expect(merged.versions[0].tags).toEqual({ stage: 'staging' });
    expect(merged.versions[0].job_id).toBe('3f9a1c2b7d10');
    expect(merged.versions[1].creation_timestamp).toBe(1733300000.5);
    expect(merged.aliases).toEqual({ champion: '1' });
  });
});
