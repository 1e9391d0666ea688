/**
 * Interfaces mirroring the wire models of the training-manager REST API
 * (see docs/architecture.md). Fields the server may omit are optional.
 */

/**
 * The status of a job.
 */
export type JobStatus =
  'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/**
 * Every job status, in the order the filter offers them.
 */
export const JOB_STATUSES: JobStatus[] = [
  'queued',
  'running',
  'succeeded',
  'failed',
  'cancelled'
];

/**
 * Whether a job in this status can still change.
 */
export function isActive(status: JobStatus | string): boolean {
  return status === 'queued' || status === 'running';
}

/**
 * What a job asked for.
 */
export interface IJobRequest {
  devices?: number | string | null;
  accelerator?: string | null;
  strategy?: string | null;
  memory?: number | string | null;
  priority?: number | null;
  cluster?: string | null;
}

/**
 * What the scheduler gave a job.
 */
export interface IJobAllocation {
  node?: string | null;
  gpus?: number[];
  cpu_slots?: number | null;
}

/**
 * The latest progress a job reported.
 */
export interface IJobProgress {
  step?: number | null;
  total_steps?: number | null;
  epoch?: number | null;
  max_epochs?: number | null;
  samples_per_sec?: number | null;
  eta?: number | null;
  fraction?: number | null;
}

/**
 * Why a job failed.
 */
export interface IJobError {
  rank?: number | null;
  message?: string;
  traceback?: string;
}

/**
 * A job record, as `GET jobs/<id>` returns it.
 */
export interface IJobRecord {
  id: string;
  name?: string | null;
  experiment?: string | null;
  status: JobStatus;
  reason?: string | null;
  queue_position?: number | null;
  created_at?: number | null;
  started_at?: number | null;
  ended_at?: number | null;
  request?: IJobRequest | null;
  allocation?: IJobAllocation | null;
  world_size?: number | null;
  run_id?: string | null;
  model_uri?: string | null;
  backend?: string | null;
  backend_id?: string | null;
  progress?: IJobProgress | null;
  last_metrics?: Record<string, number | null> | null;
  error?: IJobError | null;
}

/**
 * The answer of `GET jobs`.
 */
export interface IJobList {
  jobs: IJobRecord[];
  total: number;
}

/**
 * One chunk of a rank's log, as `GET jobs/<id>/logs` returns it.
 */
export interface ILogChunk {
  rank: number;
  text: string;
  offset: number;
}

/**
 * One event of a job's event stream.
 */
export interface IJobEvent {
  type: 'metric' | 'progress' | 'params' | 'warning' | 'status' | string;
  t?: number;
  step?: number;
  epoch?: number;
  key?: string;
  value?: number | null;
  nonfinite?: 'nan' | 'inf' | '-inf';
  status?: JobStatus;
  reason?: string | null;
  message?: string;
  [extra: string]: unknown;
}

/**
 * A batch of events and the cursor to read on from.
 */
export interface IEventBatch {
  events: IJobEvent[];
  cursor: number;
}

/**
 * One GPU of a node.
 */
export interface IGpu {
  index: number;
  name?: string | null;
  uuid?: string | null;
  utilization?: number | null;
  memory_total?: number | null;
  memory_used?: number | null;
  holder?: IHolder | IHolder[] | string | null;
  processes?: unknown[];
  [extra: string]: unknown;
}

/**
 * Who holds a device: a job or a kernel.
 */
export interface IHolder {
  kind?: 'job' | 'kernel' | string;
  id?: string;
  name?: string | null;
  job_id?: string | null;
  kernel_id?: string | null;
  pid?: number | null;
  gpus?: number[];
  node?: string | null;
  [extra: string]: unknown;
}

/**
 * One node of the inventory.
 */
export interface INode {
  name: string;
  cpu_count?: number | null;
  cpu_percent?: number | null;
  memory_total?: number | null;
  memory_used?: number | null;
  gpus?: IGpu[];
  [extra: string]: unknown;
}

/**
 * One waiting job of the scheduler's queue.
 */
export interface IQueueEntry {
  id?: string;
  job_id?: string;
  name?: string | null;
  position?: number | null;
  reason?: string | null;
  [extra: string]: unknown;
}

/**
 * What the scheduler can hand out and what is handed out.
 */
export interface ICapacity {
  cpu_slots?: number;
  cpu_slots_used?: number;
  gpus?: number[];
  busy_gpus?: number[];
}

/**
 * A running job and what it holds.
 */
export interface IAllocationEntry {
  job_id?: string;
  name?: string | null;
  allocation?: IJobAllocation;
}

/**
 * The answer of `GET resources`.
 */
export interface IResources {
  nodes: INode[];
  holders?: Record<string, IHolder | IHolder[]>;
  queue?: IQueueEntry[];
  capacity?: ICapacity;
  allocations?: IAllocationEntry[];
  error?: string | null;
  backend?: string;
  [extra: string]: unknown;
}

/**
 * One version of a registered model.
 */
export interface IModelVersion {
  version: string;
  aliases: string[];
  tags: Record<string, string>;
  run_id?: string | null;
  job_id?: string | null;
  status?: string | null;
  source?: string | null;
  creation_timestamp?: number | null;
  description?: string | null;
}

/**
 * A registered model with its versions.
 */
export interface IRegisteredModel {
  name: string;
  description?: string | null;
  aliases: Record<string, string>;
  tags?: Record<string, string>;
  versions: IModelVersion[];
}

/**
 * The answer of `GET models`.
 */
export interface IModelList {
  models: IRegisteredModel[];
}

/**
 * The error body the server sends with a 4xx or 5xx status.
 */
export interface IErrorBody {
  error?: string;
  detail?: string;
}
