/**
 * Defensive readers that turn decoded JSON into the wire interfaces, so that
 * a missing or renamed field shows as "unknown" instead of breaking the panel.
 */

import type {
  IAllocationEntry,
  ICapacity,
  IGpu,
  IHolder,
  IJobList,
  IJobRecord,
  IModelList,
  IModelVersion,
  INode,
  IQueueEntry,
  IRegisteredModel,
  IResources
} from './wire';

type Json = Record<string, unknown>;

/**
 * Read the answer of `GET jobs`.
 *
 * @throws {Error} when the answer has no `jobs` list.
 */
export function parseJobList(data: unknown): IJobList {
  const body = asObject(data);
  if (!Array.isArray(body.jobs)) {
    throw new Error('The jobs answer has no "jobs" list.');
  }
  const jobs = body.jobs
    .map(asObject)
    .filter(job => typeof job.id === 'string' && typeof job.status === 'string')
    .map(job => job as unknown as IJobRecord);
  const total = typeof body.total === 'number' ? body.total : jobs.length;
  return { jobs, total };
}

/**
 * Read the answer of `GET resources`; every node gets a name and a GPU list.
 *
 * @throws {Error} when the answer has no `nodes` list or mapping.
 */
export function parseResources(data: unknown): IResources {
  const body = asObject(data);
  let rawNodes: unknown[];
  if (Array.isArray(body.nodes)) {
    rawNodes = body.nodes;
  } else if (body.nodes && typeof body.nodes === 'object') {
    rawNodes = Object.entries(body.nodes as Json).map(([name, node]) => ({
      name,
      ...asObject(node)
    }));
  } else {
    throw new Error('The resources answer has no "nodes".');
  }
  const nodes = rawNodes.map((raw, index) => readNode(asObject(raw), index));
  const holders = body.holders;
  if (holders && typeof holders === 'object' && !Array.isArray(holders)) {
    for (const node of nodes) {
      for (const gpu of node.gpus ?? []) {
        gpu.holder =
          gpu.holder ?? lookupHolder(holders as Json, node.name, gpu);
      }
    }
  }
  const queue = Array.isArray(body.queue)
    ? body.queue.map(entry => asObject(entry) as IQueueEntry)
    : [];
  const allocations = Array.isArray(body.allocations)
    ? body.allocations.map(entry => asObject(entry) as IAllocationEntry)
    : [];
  return {
    ...body,
    nodes,
    queue,
    allocations,
    capacity: asObject(body.capacity) as ICapacity
  } as IResources;
}

/**
 * Read the answer of `GET models` (or of `GET models/<name>` for one model).
 */
export function parseModelList(data: unknown): IModelList {
  const body = asObject(data);
  const raw = Array.isArray(body.models)
    ? body.models
    : Array.isArray(body.registered_models)
      ? body.registered_models
      : typeof body.name === 'string'
        ? [body]
        : [];
  return { models: raw.map(model => readModel(asObject(model))) };
}

/**
 * Merge the answer of `GET models/<name>` (the versions) into a listed model,
 * reconciling aliases.
 */
export function mergeVersions(
  model: IRegisteredModel,
  detail: unknown
): IRegisteredModel {
  const body = asObject(detail);
  return readModel({
    name: model.name,
    description: model.description,
    aliases: model.aliases,
    tags: model.tags,
    versions: Array.isArray(body.versions) ? body.versions : []
  });
}

/**
 * Who holds a GPU, in a few words: a job name or id, or a kernel; several
 * holders are joined with commas.
 */
export function describeHolder(holder: IGpu['holder']): string {
  if (holder === null || holder === undefined || holder === '') {
    return '';
  }
  if (typeof holder === 'string') {
    return holder;
  }
  if (Array.isArray(holder)) {
    return holder.map(describeHolder).filter(Boolean).join(', ');
  }
  const h = holder as IHolder;
  const jobId = h.job_id ?? (h.kind === 'job' ? h.id : undefined);
  if (jobId) {
    return h.name ? `job ${h.name} (${jobId})` : `job ${jobId}`;
  }
  const kernelId = h.kernel_id ?? (h.kind === 'kernel' ? h.id : undefined);
  if (kernelId) {
    return h.name
      ? `kernel ${h.name}`
      : `kernel ${String(kernelId).slice(0, 8)}`;
  }
  if (h.pid) {
    return `process ${h.pid}`;
  }
  return h.name ?? '';
}

/**
 * The holders of a GPU from the `holders` map, keyed by the GPU's UUID, by
 * `<node>:<index>` or by the index, tried in that order.
 */
function lookupHolder(holders: Json, node: string, gpu: IGpu): IGpu['holder'] {
  const keys = [gpu.uuid, `${node}:${gpu.index}`, String(gpu.index)];
  for (const key of keys) {
    if (typeof key === 'string' && key in holders) {
      const found = holders[key];
      return Array.isArray(found)
        ? (found.map(asObject) as IHolder[])
        : (asObject(found) as IHolder);
    }
  }
  const processes = Array.isArray(gpu.processes) ? gpu.processes.length : 0;
  return processes
    ? `${processes} other process${processes > 1 ? 'es' : ''}`
    : null;
}

function readNode(raw: Json, index: number): INode {
  const cpu = asObject(raw.cpu);
  const memory = asObject(raw.memory);
  const gpus = Array.isArray(raw.gpus)
    ? raw.gpus.map((gpu, gpuIndex) => readGpu(asObject(gpu), gpuIndex))
    : [];
  return {
    ...raw,
    name: firstString(raw.name, raw.hostname, raw.node) ?? `node ${index}`,
    cpu_count: firstNumber(raw.cpu_count, cpu.count, cpu.logical, raw.cpus),
    cpu_percent: firstNumber(raw.cpu_percent, cpu.percent, cpu.utilization),
    memory_total: firstNumber(raw.memory_total, memory.total, raw.mem_total),
    memory_used: firstNumber(
      raw.memory_used,
      memory.used,
      subtract(memory.total, memory.available)
    ),
    gpus
  };
}

function readGpu(raw: Json, index: number): IGpu {
  const memory = asObject(raw.memory);
  return {
    ...raw,
    index: firstNumber(raw.index, raw.id) ?? index,
    uuid: firstString(raw.uuid),
    name: firstString(raw.name, raw.model),
    utilization: firstNumber(raw.utilization, raw.util, raw.gpu_util),
    memory_total: firstNumber(raw.memory_total, memory.total),
    memory_used: firstNumber(raw.memory_used, memory.used),
    holder: (raw.holder ?? raw.held_by ?? raw.owner ?? null) as IGpu['holder']
  };
}

function readModel(raw: Json): IRegisteredModel {
  const versions = Array.isArray(raw.versions)
    ? raw.versions.map(version => readVersion(asObject(version)))
    : Array.isArray(raw.latest_versions)
      ? raw.latest_versions.map(version => readVersion(asObject(version)))
      : [];
  const aliases: Record<string, string> = {};
  if (Array.isArray(raw.aliases)) {
    for (const entry of raw.aliases.map(asObject)) {
      if (typeof entry.alias === 'string') {
        aliases[entry.alias] = String(entry.version);
      }
    }
  } else {
    for (const [alias, version] of Object.entries(asObject(raw.aliases))) {
      aliases[alias] = String(version);
    }
  }
  // A version's alias list and the model's alias map describe the same
  // thing; fill each from the other so both views agree.
  for (const version of versions) {
    for (const alias of version.aliases) {
      aliases[alias] = aliases[alias] ?? version.version;
    }
  }
  for (const [alias, version] of Object.entries(aliases)) {
    const match = versions.find(v => v.version === version);
    if (match && !match.aliases.includes(alias)) {
      match.aliases.push(alias);
    }
  }
  versions.sort((a, b) => Number(b.version) - Number(a.version));
  return {
    name: String(raw.name ?? ''),
    description: firstString(raw.description),
    aliases,
    tags: readTags(raw.tags),
    versions
  };
}

function readVersion(raw: Json): IModelVersion {
  return {
    version: String(raw.version ?? ''),
    aliases: Array.isArray(raw.aliases) ? raw.aliases.map(String) : [],
    tags: readTags(raw.tags),
    run_id: firstString(raw.run_id),
    job_id: firstString(raw.job_id),
    status: firstString(raw.status),
    source: firstString(raw.source),
    creation_timestamp: firstNumber(raw.created_at, raw.creation_timestamp),
    description: firstString(raw.description)
  };
}

function readTags(raw: unknown): Record<string, string> {
  const tags: Record<string, string> = {};
  if (Array.isArray(raw)) {
    for (const entry of raw.map(asObject)) {
      if (typeof entry.key === 'string') {
        tags[entry.key] = String(entry.value ?? '');
      }
    }
    return tags;
  }
  for (const [key, value] of Object.entries(asObject(raw))) {
    tags[key] = String(value ?? '');
  }
  return tags;
}

function asObject(value: unknown): Json {
  return value && typeof value === 'object' && !Array.isArray(value)
    ? (value as Json)
    : {};
}

function firstNumber(...values: unknown[]): number | null {
  for (const value of values) {
    if (typeof value === 'number' && isFinite(value)) {
      return value;
    }
  }
  return null;
}

function firstString(...values: unknown[]): string | null {
  for (const value of values) {
    if (typeof value === 'string' && value !== '') {
      return value;
    }
  }
  return null;
}

function subtract(total: unknown, available: unknown): number | null {
  if (typeof total === 'number' && typeof available === 'number') {
    return total - available;
  }
  return null;
}
